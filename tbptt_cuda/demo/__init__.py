"""Demos of TBPTT(k1, k2) with TruncatedLSTM: ``python -m tbptt_cuda.demo [lm|memory|compare|balance]``.

One module per experiment: :mod:`.lm` (the default: a character-level language model; ``--cell gru`` for TruncatedGRU),
:mod:`.memory` (delayed copy: BPTT(k, k) vs BPTT(k, k2 > d)) and :mod:`.compare` (BPTT(k, k),
BPTT(k, 2k) and BPTT(n, n) on the language model at equal wall time); :mod:`.common` holds what
they share and :mod:`.cli` the registry of commands and ``main``.

Every result goes to ``--out`` (default ``results/``); plots need matplotlib (optional: skipped
with a message when it is missing). ``--steps``/``--minutes``/``--hidden`` etc. shrink a run.
"""
from .cli import COMMANDS, DEFAULT_COMMAND, build_parser, main
from .compare import run_compare
from .lm import (CharLM, CharVocabulary, LMData, bits_cross_entropy, generate, load_documents, run_lm,
                 stdlib_source_files)
from .memory import DelayedCopyModel, DelayedCopyStream, delayed_copy_accuracy, run_memory

__all__ = [
    "COMMANDS", "DEFAULT_COMMAND", "build_parser", "main",
    "CharLM", "CharVocabulary", "LMData", "bits_cross_entropy", "generate", "load_documents", "stdlib_source_files",
    "DelayedCopyModel", "DelayedCopyStream", "delayed_copy_accuracy",
    "run_lm", "run_memory", "run_compare",
]
