#!/usr/bin/env python3
"""pep440_xcheck.py: checks hf_version_cmp against the packaging library on random canonical versions (skips when packaging is absent)."""
import random
import subprocess
import sys

try:
    from packaging.version import Version
except ImportError:
    try:
        from pip._vendor.packaging.version import Version
    except ImportError:
        print("packaging not importable: skipped")
        sys.exit(77)


def random_version(rng):
    s = ""
    if rng.random() < 0.1:
        s += f"{rng.randint(0, 2)}!"
    s += ".".join(rng.choice(["0", "0", "1", "2", "10", "01"]) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.4:
        s += rng.choice(["a", "b", "rc"]) + str(rng.randint(0, 2))
    if rng.random() < 0.3:
        s += f".post{rng.randint(0, 2)}"
    if rng.random() < 0.3:
        s += f".dev{rng.randint(0, 2)}"
    if rng.random() < 0.2:
        s += "+" + ".".join(rng.choice(["abc", "1", "2", "10", "a1", "01", "z", "ab"])
                            for _ in range(rng.randint(1, 3)))
    return s


def main():
    rng = random.Random(440)
    versions = [random_version(rng) for _ in range(400)]
    pairs = [(rng.choice(versions), rng.choice(versions)) for _ in range(20000)]
    out = subprocess.run([sys.argv[1], "--version-cmp"], check=True, capture_output=True, text=True,
                         input="".join(f"{a} {b}\n" for a, b in pairs)).stdout.split("\n")
    bad = 0
    for (a, b), line in zip(pairs, out):
        got, valid = map(int, line.split())
        va, vb = Version(a), Version(b)
        want = (va > vb) - (va < vb)
        if got != want or valid != 1:
            bad += 1
            if bad <= 10:
                print(f"mismatch: {a} vs {b}: hubfleet {got} (valid {valid}), packaging {want}")
    print(f"{len(pairs)} pairs, {bad} mismatches")
    sys.exit(1 if bad else 0)


main()
