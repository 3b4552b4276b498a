"""Prediction on raw video files: the streaming predictor and what it writes."""
