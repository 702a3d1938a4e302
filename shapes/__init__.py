"""A synthetic shapes world and the tiny text-to-image latent diffusion model trained on it."""
