"""The demos' command line: the registry of commands, the parser of each, and ``main``.

A new experiment is a module with ``add_arguments(parser)`` and ``run(args) -> dict`` plus one
line in :data:`COMMANDS`."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, NamedTuple, Optional, Sequence

from . import balance, compare, lm, memory


class Command(NamedTuple):
    """One experiment: its flags, its run (parsed flags -> summary dict) and its --help line."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Dict]
    description: str


COMMANDS: Dict[str, Command] = {
    "lm": Command(lm.add_arguments, lm.run_lm,
                  "Character-level LSTM (--cell gru: GRU) language model with TBPTT(k1, k2)."),
    "memory": Command(memory.add_arguments, memory.run_memory, "Delayed-copy task: BPTT(k,k) vs BPTT(k,k2>d)."),
    "compare": Command(compare.add_arguments, compare.run_compare,
                       "BPTT(k,k) vs BPTT(k,2k) vs BPTT(n,n) on the language model."),
    "balance": Command(balance.add_arguments, balance.run_balance,
                       "Influence balancing: TBPTT diverges, ARTBP converges to theta* = -1/6."),
}
DEFAULT_COMMAND = "lm"
# Why a command has no --cell (lm and compare take --cell lstm|gru): said instead of argparse's
# "unrecognized arguments".
NO_CELL = {
    "memory": "the memory demo trains TruncatedLSTM models only (--cell is a flag of lm and compare)",
    "balance": "the balance demo has no recurrent layer to choose: it is a linear system with one scalar "
               "parameter (--cell is a flag of lm and compare)",
}


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of ``command`` (a key of :data:`COMMANDS`)."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {tuple(COMMANDS)}, got {command!r}")
    prog = "python -m tbptt_cuda.demo" + ("" if command == DEFAULT_COMMAND else f" {command}")
    epilog = None
    if command == DEFAULT_COMMAND:  # the bare --help also lists the other experiments
        epilog = "other commands (each with its own --help):\n" + "\n".join(
            f"  python -m tbptt_cuda.demo {name:<8} {cmd.description}"
            for name, cmd in COMMANDS.items() if name != DEFAULT_COMMAND)
    parser = argparse.ArgumentParser(prog=prog, description=COMMANDS[command].description,
                                     epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    COMMANDS[command].add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Parse ``[command] [flags]`` (lm when no command is given) and run; returns a summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = DEFAULT_COMMAND
    if argv and argv[0] in COMMANDS:
        command = argv.pop(0)
    elif argv and not argv[0].startswith("-"):
        raise SystemExit(f"unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)} "
                         f"(default {DEFAULT_COMMAND})")
    if command in NO_CELL and any(a == "--cell" or a.startswith("--cell=") for a in argv):
        raise SystemExit(f"--cell: {NO_CELL[command]}")
    args = build_parser(command).parse_args(argv)
    return COMMANDS[command].run(args)
