"""``python -m kdcore``: the command line (what torchrun's ``-m kdcore`` starts)."""

from kdcore.cli import main

if __name__ == "__main__":
    main()
