"""The step engine: jobs join and leave a running batch at every denoising step."""
