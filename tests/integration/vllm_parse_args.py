"""Parse argument lists with the `vllm serve` parser of the vLLM this runs with (inside the test image).

Run by tests/integration/test_multinode_args.py as
    python3 /cases/vllm_parse_args.py /cases/cases.json
Each case is {label, argv (after `vllm`), expect: {dest: value}}. For each it prints one JSON line:
{label, ok, errors}. A case fails when vLLM's parser exits (an unknown option, a bad value), when a
long option is not one of the parser's own names (argparse would also take an unambiguous prefix
such as --nnode for --nnodes, which a later vLLM may make ambiguous), or when a parsed value is not
the expected one.

The parser is the one `vllm serve` builds (vllm.entrypoints.cli.serve.ServeSubcommand with
vllm.utils.argparse_utils.FlexibleArgumentParser), as in tools/vllm_serve_options.py.
"""

import contextlib
import io
import json
import sys


def serve_parser():
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    top = FlexibleArgumentParser(prog="vllm")
    subparsers = top.add_subparsers(dest="subparser")
    serve = ServeSubcommand().subparser_init(subparsers)
    return top, serve


def check(top, serve, case):
    names = {s for a in serve._actions for s in a.option_strings}
    errors = []
    for token in case["argv"]:
        if token.startswith("--") and token.split("=", 1)[0] not in names:
            errors.append("%s is not an option name of vllm serve" % token)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = top.parse_args(list(case["argv"]))
    except SystemExit as e:
        errors.append("vllm's parser exited with %s: %s" % (e.code, stderr.getvalue().strip().splitlines()[-1:]))
        return errors
    except Exception as e:  # FlexibleArgumentParser raises ValueError for some mistakes
        errors.append("vllm's parser raised %s: %s" % (type(e).__name__, e))
        return errors
    for dest, wanted in sorted(case["expect"].items()):
        got = getattr(args, dest, "<missing>")
        if got != wanted and str(got) != str(wanted):
            errors.append("%s parsed as %r, not %r" % (dest, got, wanted))
    return errors


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    top, serve = serve_parser()
    for case in cases:
        errors = check(top, serve, case)
        print(json.dumps({"label": case["label"], "ok": not errors, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
