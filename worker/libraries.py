"""diffusers and transformers log through our JSON handler, without progress bars."""

import os


def route_library_logs() -> None:
    """Call before the model libraries print anything (so: first thing in the process)."""
    # Read once by huggingface_hub at import: the bars would garble the log stream.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        library.disable_progress_bar()
    # Their warnings can quote the prompt (e.g. CLIP's "part of your input was truncated"):
    # only errors, which do not, reach our logs.
    diffusers_logging.set_verbosity_error()
