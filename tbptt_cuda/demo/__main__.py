"""``python -m tbptt_cuda.demo [lm|memory|compare] [flags]``: the demos' entry point (lm by default)."""
from .cli import main

if __name__ == "__main__":
    main()
