"""Training, evaluation and inference loops and what runs around them."""
