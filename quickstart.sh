#!/usr/bin/env bash
# The whole path of a real user, on a fresh machine with only Python: install, make a small labelled video
# dataset, extract frames, build the annotation JSON, train a 3D ResNet on the CPU with validation, run
# inference and evaluate it. About ten minutes on two CPU cores. Set SKIP_INSTALL=1 to use the current Python.
set -euo pipefail
cd "$(dirname "$0")"
start=$SECONDS

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  echo "== 1/6 installing requirements into .venv"
  python3 -m venv .venv
  . .venv/bin/activate
  python -m pip install -q -r requirements.txt
fi

echo "== 2/6 writing demo videos (6 motion classes) to demo/videos"
python -m util_scripts.make_demo_dataset demo

echo "== 3/6 extracting JPEG frames to demo/jpg"
python -m util_scripts.generate_video_jpgs demo/videos demo/jpg ucf101 --size 48

echo "== 4/6 building the annotation JSON from the split files"
python -m util_scripts.ucf101_json demo/splits demo/jpg demo

echo "== 5/6 training a 3D ResNet-10 with validation, then inference (3 clips per video) on the validation videos"
# --no_hflip: the direction of motion is the label, so a mirrored clip would change its class.
python main.py --root_path demo --video_path jpg --annotation_path ucf101_01.json --result_path results \
  --dataset ucf101 --n_classes 6 --model resnet --model_depth 10 --resnet_widen_factor 0.5 \
  --sample_size 48 --sample_duration 16 --train_crop center --no_hflip \
  --batch_size 8 --learning_rate 0.05 --weight_decay 1e-4 --lr_scheduler cosine --n_epochs 20 \
  --checkpoint 5 --n_threads 2 --inference --inference_n_clips 3 --inference_batch_size 4 --no_cuda

echo "== 6/6 evaluating video-level accuracy"
python -m util_scripts.eval_accuracy demo/ucf101_01.json demo/results/val.json --subset validation -k 1 --per_class
echo "quickstart finished in $((SECONDS - start)) s; results in demo/results"
