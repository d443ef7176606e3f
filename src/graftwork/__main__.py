"""``python -m graftwork ...`` = ``graft ...`` (also ``torchrun -m graftwork``,
``accelerate launch -m graftwork``)."""
from graftwork.cli import main

main()
