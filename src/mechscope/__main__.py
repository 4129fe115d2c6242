"""``python -m mechscope``: the command line, also as torchrun runs it
(``torchrun --nproc-per-node 2 -m mechscope sae train ...``)."""

from mechscope.cli.app import app

if __name__ == "__main__":
    app(prog_name="mechscope")
