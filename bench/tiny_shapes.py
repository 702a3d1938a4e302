"""The offline model's figures in the README: accuracy on 240 held-out captions at guidance
1, 3, 5 and 7.5, the sample grid and the image-to-image strip.

    python -m bench.tiny_shapes

The same as the README's `python -m shapes.evaluate ...` command (about 2 minutes on one CPU
thread); it writes docs/tiny-shapes-eval.json and the two PNGs. Time to a picture through the
service is `python -m bench.first_image`.
"""

from shapes import evaluate

README_RUN = [
    "worker/weights/tiny-shapes",
    "--count", "240",
    "--guidance", "1", "3", "5", "7.5",
    "--grid", "docs/tiny-shapes-samples.png",
    "--json", "docs/tiny-shapes-eval.json",
    "--img2img", "docs/tiny-shapes-img2img.png",
]  # fmt: skip

if __name__ == "__main__":
    evaluate.main(README_RUN)
