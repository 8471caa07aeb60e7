"""A corpus of bad (and awkward but valid) image inputs, generated at test time: nothing binary is committed.

`build_corpus(dir)` writes every case into `dir` and returns the list of `Case`s with the behaviour each
one expects from `synapse7.io.open_image`; `fuzzing` holds the mutation harness shared by
tests/test_fuzz.py and bench/fuzz.py.
"""

from .build import Case, build_corpus, expected_outcome, summarize

__all__ = ["Case", "build_corpus", "expected_outcome", "summarize"]
