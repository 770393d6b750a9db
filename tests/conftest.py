import os

# Nothing may reach for a model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Image-embedding caches of commands run without --cache-dir go to a temporary folder, not
# the user's ~/.cache (mechtune.cli.negation.default_cache_dir reads MECHTUNE_CACHE).
if "MECHTUNE_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MECHTUNE_CACHE"] = tempfile.mkdtemp(prefix="mechtune-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MECHTUNE_CACHE"], True)
