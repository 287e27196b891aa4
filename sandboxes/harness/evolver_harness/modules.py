"""Load the task's evaluator file as a module, in the trusted harness and in the untrusted child alike."""

import sys

EVALUATOR_MODULE = "task_evaluator"


def load_file_module(path: str, name: str = EVALUATOR_MODULE):
    # compile+exec instead of importlib.util: the same module semantics for a single file, less start-up.
    module = type(sys)(name)
    module.__file__ = path
    sys.modules[name] = module
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    exec(code, module.__dict__)
    return module
