"""``python -m vastai_async`` runs the ``vastai-async`` command."""

from vastai_async.cli import main

if __name__ == "__main__":
    main()
