"""A module to run with `-m`: prints what `__main__` sees, then exits with the status its first argument gives.

    cd tests/scripts && python -m print_main 3 --any flags
    cd tests/scripts && python -m aesam_hf.run -m print_main 3 --any flags

It prints one JSON line: `sys.argv`, `sys.path[0]` and the class that `transformers.Trainer` is.
`tests/test_launcher.py` runs it both ways and compares the two.
"""

import json
import sys

import transformers


if __name__ == "__main__":
    trainer = transformers.Trainer
    seen = {"argv": sys.argv, "path0": sys.path[0], "trainer": f"{trainer.__module__}.{trainer.__name__}"}
    sys.stdout.write(json.dumps(seen) + "\n")
    sys.exit(int(sys.argv[1]))
