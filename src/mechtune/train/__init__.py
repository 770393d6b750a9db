"""Training: LoRA on the text tower, NAST gradient scaling, losses."""
