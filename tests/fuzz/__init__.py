"""Fuzz suites (issue 10's proof): hostile inputs at every door that takes bytes from outside.

The decoder (`inspect_image`), the upload API, queue-side messages and bank hash-list imports,
each fed by Hypothesis strategies (`strategies`) and checked against one contract: the answer is
a decision or a 4xx error of the catalogue, never anything else, within a time and memory bound
per item (`meter`). `HYPOTHESIS_PROFILE=long` (`make fuzz`) runs 2,000 examples per test; the
default `ci` profile runs 50, derandomized. Reproducers of bugs found live in `regressions/`.
"""
