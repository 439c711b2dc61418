"""The long run of the input-contract fuzzer (tests/test_fuzz.py): random seeds, many examples per
file kind and option. Usage: python benchmarks/fuzz.py [EXAMPLES] (default 300). A failure prints the
smallest damaged input Hypothesis found; keep it as a named case in tests/test_trust.py."""

import os
import sys

import pytest

if __name__ == "__main__":
    os.environ["SPARSECIRCUITS_FUZZ_PROFILE"] = "long"
    os.environ["SPARSECIRCUITS_FUZZ_EXAMPLES"] = sys.argv[1] if len(sys.argv) > 1 else "300"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.exit(pytest.main([os.path.join(root, "tests", "test_fuzz.py"), "-q", "-p", "no:cacheprovider"]))
