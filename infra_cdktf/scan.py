"""Run checkov over every synthesized stack with the reviewed skip list; exit non-zero on any other finding.

    python scan.py [--checkov PATH] [--out cdktf.out]
checkov lives in its own virtualenv (its pins clash with the platform's): `make checkov` creates it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def load_skips(path: Path = HERE / "checkov-skips.yaml") -> dict[str, dict]:
    skips = yaml.safe_load(path.read_text()) or {}
    for check, entry in skips.items():
        if not isinstance(entry, dict) or not str(entry.get("reason", "")).strip():
            raise ValueError(f"skip {check} has no reason")
    return skips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkov", default=str(HERE.parent / ".venv-checkov" / "bin" / "checkov"))
    parser.add_argument("--out", default=str(HERE / "cdktf.out"))
    args = parser.parse_args()
    skips = load_skips()
    failed = 0
    for stack in sorted((Path(args.out) / "stacks").iterdir()):
        applicable = [c for c, e in skips.items() if not e.get("stacks") or stack.name in e["stacks"]]
        result = subprocess.run([args.checkov, "-d", str(stack), "--framework", "terraform_json", "--quiet", "--compact",
                                 "-o", "json", "--skip-check", ",".join(applicable)], capture_output=True, text=True)
        report = json.loads(result.stdout or "{}")
        reports = report if isinstance(report, list) else [report]
        summary = {"passed": 0, "failed": 0, "skipped": 0}
        for r in reports:
            for key in summary:
                summary[key] += r.get("summary", {}).get(key, 0)
            for finding in r.get("results", {}).get("failed_checks", []):
                print(f"FAILED {stack.name}: {finding['check_id']} {finding['check_name']} ({finding['resource']})")
        print(f"{stack.name}: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped")
        failed += summary["failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
