"""``convert``: a diffusers UNet2DModel <-> this project's checkpoint, both ways (lab/convert.py), and a check that
the two networks compute the same function on a random batch. diffusers is the optional ``interop`` extra."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from reference.errors import InputError

from .. import checkpoint
from .. import convert as C
from ..cli import add_command, check_output

CHECK_REL = 1e-3  # the check's verdict: max |ours - diffusers| / max |diffusers| on its batch (float32: ~1e-6)


def configure(p):
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-diffusers", metavar="DIR",
                     help="a folder written by UNet2DModel.save_pretrained (config.json and the weights, "
                          "safetensors or bin; or a pipeline folder with unet/), with scheduler_config.json beside it "
                          "or in scheduler/ (else DDPMScheduler's defaults). Read from disk: no network")
    way.add_argument("--ckpt", metavar="FILE.npz", help="a checkpoint of this project (either side) to write as "
                                                       "a UNet2DModel; needs --to-diffusers")
    p.add_argument("--out", metavar="FILE.npz", help="with --from-diffusers: the checkpoint to write")
    p.add_argument("--to-diffusers", metavar="DIR", help="with --ckpt: the DDPMPipeline folder to write "
                   "(model_index.json, unet/, scheduler/, and ddpm_executable.json with this project's "
                   "configuration, which a conversion back restores)")
    p.add_argument("--data", metavar="NAME", default=None,
                   help="with --from-diffusers: the dataset the model was trained on, which eval judges against "
                        "(default: the one whose items have the model's shape natively, e.g. cifar10 for 3x32x32; "
                        "none if no dataset has that shape: sample needs none)")
    p.add_argument("--no-ema", action="store_true", help="with --ckpt: write the raw weights, not their EMA")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check: both networks on 2 random inputs, the largest difference printed")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch_port only: where the "
                                                                                    "check runs")


def _misplaced(flags, way, other):
    """InputError naming the flags given (from ``flags``, name -> value) that belong to the other way."""
    given = [f for f, v in flags.items() if v]
    if given:
        raise InputError(f"{' and '.join(given)} {'goes' if len(given) == 1 else 'go'} with {other}, not {way}")


def _check_args(args):
    """The flags against each other and the paths' kinds, before diffusers is imported or a file is read."""
    if args.from_diffusers is not None:
        if not args.out:
            raise InputError("--from-diffusers needs --out FILE.npz, the checkpoint to write")
        if Path(args.out).suffix != ".npz":
            raise InputError(f"--out must name the .npz checkpoint to write, got {args.out!r}")
        if Path(args.out).is_dir():
            raise InputError(f"--out {args.out} is a folder: give the .npz checkpoint file to write")
        _misplaced({"--to-diffusers": args.to_diffusers, "--no-ema": args.no_ema}, "--from-diffusers", "--ckpt")
    else:
        _misplaced({"--out": args.out, "--data": args.data}, "--ckpt", "--from-diffusers")
        if not args.to_diffusers:
            raise InputError("--ckpt needs --to-diffusers DIR, the folder to write")
        if Path(args.to_diffusers).exists() and not Path(args.to_diffusers).is_dir():
            raise InputError(f"--to-diffusers {args.to_diffusers} is a file: give a folder to write the pipeline "
                             "into")
        if not Path(args.ckpt).is_file():
            raise InputError(f"--ckpt {args.ckpt}: no such file")


def _ours(B, kw, params, device):
    """The backend's UNet with ``params``, as a function of NumPy (x, t, y) -> NumPy output (y: class labels of
    a conditional model, else None)."""
    kw = {k: v for k, v in kw.items() if k not in ("dtype", "seed")}
    if B.name == "reference":
        model = B.unet.UNet(**kw)
        model.load_params(params)
        return lambda x, t, y=None: model.forward(x, t, y)[0]
    import torch
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = B.unet.UNet(**kw).to(dev)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in params.items()})
    model.eval()

    def f(x, t, y=None):
        with torch.no_grad():
            y = None if y is None else torch.from_numpy(y).to(dev)
            return model(torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev), y).cpu().numpy()
    return f


def check(B, dmodel, kw, params, shape, T, device="auto"):
    """Both networks on 2 inputs x ~ N(0, I) (seed 0) at t = 0 and T - 1 (a conditional model: class 0 and the
    null class K, diffusers' label K) -> (max abs difference, max abs output)."""
    import torch
    x = np.random.default_rng(0).standard_normal((2,) + tuple(shape)).astype(np.float32)
    t = np.array([0, T - 1])
    k = kw.get("num_classes")
    y = None if k is None else np.array([0, k])
    with torch.no_grad():
        labels = None if y is None else torch.from_numpy(y)
        want = dmodel.float().eval()(torch.from_numpy(x), torch.from_numpy(t), class_labels=labels).sample.numpy()
    got = _ours(B, kw, params, device)(x, t, y)
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def _report(B, diff, scale, side):
    rel = diff / scale if scale else 0.0
    print(f"check: {side} and diffusers' UNet2DModel on 2 random inputs (t = 0, T-1, float32; a conditional "
          "model's class 0 and null class): "
          f"max |difference| {diff:.2e}, outputs up to {scale:.3g} (relative {rel:.1e})")
    if rel > CHECK_REL:
        print(f"error: the two networks differ by more than {CHECK_REL:g} relative: the conversion is wrong")
        return 1
    return 0


def run(args, B):
    _check_args(args)
    check_output(args.out or args.to_diffusers, "--out" if args.out else "--to-diffusers", folder=not args.out)
    diffusers = C.require_diffusers()
    side = "the NumPy reference" if B.name == "reference" else "the torch port"
    if args.from_diffusers is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            ck = C.from_diffusers(args.from_diffusers, data=args.data)
        path = checkpoint.save(args.out, ck.params, config=ck.config, step=ck.step, extra=ck.extra)
        cfg, shape, params = ck.config, ck.extra["item_shape"], ck.params
        n = sum(int(np.asarray(v).size) for v in params.values())
        print(f"wrote {path}: {n:,} parameters, data {cfg['data'] or 'none recorded'}, T={cfg['T']} "
              f"{cfg['schedule']}, prediction {cfg['prediction']}, variance {cfg['variance']}, "
              f"model {json.dumps(cfg['model'])}")
        if cfg["data"] is None:
            hits, dims = C.native_datasets(shape), "x".join(map(str, shape))
            why = f"{' and '.join(hits)} all have items of {dims}" if hits else f"no dataset has items of {dims}"
            print(f"no dataset recorded ({why}): sample needs none; eval asks for --data NAME (or convert again "
                  "with --data NAME)")
        s = ck.extra["sampling"]
        vtype = {v: k for k, v in C.VARIANCE_TYPES.items()}[s["variance"]]
        print(f"the scheduler config samples with variance_type {vtype} (sample --variance {s['variance']}), "
              f"clip_sample {str(s['clip_x0']).lower()}, timestep_spacing {s['spacing']} (--spacing {s['spacing']})")
        if args.no_check:
            return 0
        dmodel = diffusers.UNet2DModel.from_pretrained(C.unet_folder(args.from_diffusers), local_files_only=True,
                                                       low_cpu_mem_usage=False)
    else:
        dmodel = C.to_diffusers(args.ckpt, args.to_diffusers, use_ema=not args.no_ema)
        ck = checkpoint.load(args.ckpt)
        cfg, shape = ck.config, C.item_shape(ck)
        params = ck.ema if ck.ema and not args.no_ema else ck.params
        print(f"wrote {args.to_diffusers}: a DDPMPipeline folder ({C.PIPELINE_INDEX}; unet/: UNet2DModel, "
              f"{sum(p.numel() for p in dmodel.parameters()):,} parameters, {'EMA' if params is ck.ema else 'raw'} "
              f"weights; scheduler/: DDPMScheduler) and {C.SIDE_FILE}")
        k = (cfg.get("model") or {}).get("num_classes")
        if k is not None:
            print(f"class-conditional: num_class_embeds={k + 1}, class_labels 0..{k - 1} and {k} the null class "
                  "(the unconditional model); DDPMPipeline passes no class_labels, so call the unet in a loop")
        if args.no_check:
            return 0
    kw = C.full_kwargs(cfg["model"], shape[0], cfg.get("variance", "fixed"))
    return _report(B, *check(B, dmodel, kw, params, shape, cfg["T"], args.device), side)


add_command(
    "convert", "convert a diffusers UNet2DModel to a checkpoint of this project, or back", configure, run,
    description="""
    diffusers' UNet2DModel with DDPM's layout (ResNet blocks, one-head attention at chosen levels, the
    positional time embedding with freq_shift 1 and flip_sin_to_cos false) is the same network as this
    project's UNet: every weight maps to one of ours. --from-diffusers writes a checkpoint that both sides
    load (python -m reference sample --ckpt ...), with the schedule of the scheduler config; a model whose
    item shape no dataset has converts with no dataset recorded (sample needs none; eval then asks for
    --data). --ckpt ... --to-diffusers writes a DDPMPipeline folder (model_index.json, unet/, scheduler/)
    that DDPMPipeline.from_pretrained loads. A class-conditional UNet's K classes and null class are
    num_class_embeds = K + 1 (label K the null class); learned variances are out_channels = 2C with
    variance_type learned_range; both convert back. Configurations our UNet cannot express are refused
    naming the field. Then both networks run on a random batch and the largest difference is printed
    (skip with --no-check). Needs diffusers: pip install -e ".[interop]".
    """,
    epilog="""
    examples:
      python -m torch_port convert --from-diffusers ddpm-cifar10-32 --out runs/ddpm-cifar10/ckpt.npz
      python -m torch_port convert --ckpt runs/digits/ckpt.npz --to-diffusers runs/digits-diffusers
    """)
