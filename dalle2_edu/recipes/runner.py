"""The one training runner: train → grade → save → report, for one stage or the whole pipeline.

    python -m dalle2_edu train all --recipe fast --out runs/fast            # the catalogue
    python -m dalle2_edu train all --data my_pictures/ --out runs/mine      # your own folder
    torchrun --standalone --nproc-per-node=2 -m dalle2_edu train decoder --out runs/fast

For every stage the runner

1. takes the stage's settings from the recipe (scaled to a folder's size),
2. records what the stage is trained against: the data's fingerprint, the settings, the seed, and the SHA-256 of each
   upstream stage's weights (the prior and decoder learn one CLIP's embeddings);
3. resumes the stage's Trainer checkpoint under ``OUT/runs/STAGE`` when it was trained against the same things, and
   otherwise moves the stale run aside (``OUT/runs/STAGE.stale-N``, nothing is deleted) and trains afresh;
4. saves the EMA weights ``OUT/<file>.safetensors`` and a JSON beside them with the command that reproduces them, and
   a summary in ``OUT/report.json``.

``OUT`` is locked for the whole run (:class:`~dalle2_edu.runlock.RunLock`): a second run on the same folder stops at
once, naming the first. Under torchrun only rank 0 locks, writes and reports; the others train their share of each
batch and wait at barriers.
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from dalle2_edu.recipes.data import TrainingSet
from dalle2_edu.recipes.settings import (
    CATALOGUE_ONLY,
    EVALUATION,
    EVALUATION_SAMPLER,
    OPTIONAL_STAGES,
    PIPELINE_STAGES,
    RECIPES,
    STAGE_FILES,
    UPSTREAM,
    recipe_for,
)
from dalle2_edu.recipes.stages import STAGES, StageContext, final_loss

REPORT = "report.json"
ALL = (*PIPELINE_STAGES, "evaluate")


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


def resolve_stages(names: str | list[str], data_kind: str) -> list[str]:
    """``"all"`` → the pipeline's stages then ``evaluate``; a comma list → those, in pipeline order."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names == ["all"]:
        return list(ALL)
    known = (*STAGES, "evaluate")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TrainingError(f"unknown stage(s) {', '.join(unknown)}; choose among all, {', '.join(known)}")
    if data_kind == "folder":
        bad = [n for n in names if n in CATALOGUE_ONLY]
        if bad:
            raise TrainingError(f"{', '.join(bad)} need(s) the catalogue's attribute labels, which a folder of "
                                "captioned pictures does not have; train them without --data")  # fmt: skip
    order = [*PIPELINE_STAGES, *OPTIONAL_STAGES, *CATALOGUE_ONLY, "evaluate"]
    return sorted(dict.fromkeys(names), key=order.index)


def shipped_folder() -> Path:
    from dalle2_edu.utils import data_dir

    return (data_dir() / "checkpoints").resolve()


def training_speed(trainer) -> dict:
    """The training loop's own speed in a stage's run: ``loop_steps`` updates in ``loop_seconds`` (``train_seconds``
    also counts drawing the data, CLIP embeddings and loading; resumed steps are not counted again)."""
    last = getattr(trainer, "last_fit", None) or {}
    if not last.get("steps"):
        return {}
    return {"loop_steps": int(last["steps"]), "loop_seconds": round(last["seconds"], 1),
            "steps_per_second": round(last["steps"] / last["seconds"], 2)}  # fmt: skip


def _precision_name(trainer) -> str:
    """What the stage trained in: ``"fp32"``, or the autocast dtype ``--precision`` resolved to (``auto`` is bf16 on a
    CPU with AMX / AVX-512 BF16 and fp32 on other CPUs, so the report says which it was)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[getattr(trainer, "amp_dtype", None)]


def check_out_folder(out: Path, overwrite_shipped: bool = False) -> None:
    """Refuse an output folder that would lose or mix work: the shipped checkpoints (unless asked explicitly), a
    file, an unwritable place, or a Trainer's own run folder."""
    from dalle2_edu.utils import writable_folder

    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out '{out}' is a file, not a folder; pass a folder name (it is created if missing)")
    if out.resolve() == shipped_folder() and not overwrite_shipped:
        raise TrainingError(
            f"--out '{out}' is the folder of the shipped checkpoints; training there would replace them. Train into "
            "your own folder (e.g. --out runs/mine), or add --overwrite-shipped if replacing them is what you want"
        )
    if (out / "checkpoint.pt").exists():
        raise TrainingError(f"'{out}' holds a Trainer checkpoint (checkpoint.pt): it is one stage's run folder, not a "
                            "checkpoint folder; pass its parent's parent, or a new folder")  # fmt: skip
    try:
        writable_folder(out, "--out")
    except ValueError as err:
        raise TrainingError(str(err)) from None


def check_same_data(out: Path, data: TrainingSet) -> None:
    """Refuse an ``OUT`` whose earlier stages were trained on another data set (their report says which)."""
    path = out / REPORT
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text()).get("data") or {}
    except (OSError, ValueError):
        return
    if previous.get("fingerprint") and previous["fingerprint"] != data.fingerprint:
        raise TrainingError(
            f"'{out}' holds checkpoints trained on {previous.get('name', 'another data set')}, not on {data.name}; "
            "use another --out for this data (nothing was changed)"
        )


def _digest(path: Path) -> str:
    from dalle2_edu.checkpoint import weights_digest

    return weights_digest(path)


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj: dict) -> None:
    from dalle2_edu.checkpoint import _atomic_write

    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def _move_aside(run_dir: Path) -> Path:
    i = 1
    while (target := run_dir.with_name(f"{run_dir.name}.stale-{i}")).exists():
        i += 1
    shutil.move(str(run_dir), str(target))
    return target


def _move_aside_files(weights: Path, base: Path) -> Path:
    """Move a weights file and its JSON into a new folder ``base-N``; return that folder."""
    i = 1
    while (target := base.with_name(f"{base.name}-{i}")).exists():
        i += 1
    target.mkdir(parents=True)
    for path in (weights, weights.with_suffix(".json")):
        if path.exists():
            shutil.move(str(path), str(target / path.name))
    return target


def _save(stage: str, model, path: Path, report: dict) -> None:
    """Write ``model``'s weights (fp16) and ``report`` (with the model's config) as JSON beside them, through the one
    save path and its registry of kinds (:data:`dalle2_edu.checkpoint.MODEL_KINDS`)."""
    from dalle2_edu.checkpoint import save_model

    config = model.config if isinstance(model.config, dict) else model.config.to_dict()
    kinds = {"attributes": "image_model", "classifier": "attribute_classifier", "upsampler128": "upsampler"}
    kind = kinds.get(stage, stage)
    save_model(path, model, kind, {**report, "config": config}, config=config)


class Runner:
    """Trains stages of one recipe on one data set into one folder. See the module docstring."""

    def __init__(self, *, recipe: str = "fast", data: str | Path | None = None, out: str | Path = "runs/fast",
                 device: str = "auto", seed: int = 0, steps: int | dict | None = None, command: str | None = None,
                 progress: bool = True, overwrite_shipped: bool = False,
                 init_decoder: str | Path | None = None, precision: str = "auto"):  # fmt: skip
        from dalle2_edu.validate import check_seed

        if recipe not in RECIPES:
            raise TrainingError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        from dalle2_edu.utils import PRECISIONS

        if precision not in PRECISIONS:
            raise TrainingError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.recipe, self.device, self.steps, self.precision = recipe, device, steps, precision
        self.seed = check_seed(seed)
        self.out, self.data_path = Path(out), None if data is None else Path(data)
        self.command = command or "python -m dalle2_edu train"
        self.progress, self.overwrite_shipped = progress, overwrite_shipped
        self._sets: dict[int, TrainingSet] = {}
        self.init_decoder = None if init_decoder is None else Path(init_decoder)
        if self.init_decoder is not None:
            from dalle2_edu.recipes.stages import load_warm_start

            load_warm_start(self.init_decoder, build=False)  # a missing or wrong file fails now, naming what it takes
        self.info = None

    # -------------------------------------------------------------------------------------------------- data
    def data_for(self, stage: str) -> TrainingSet:
        if self.data_path is not None:
            if 0 not in self._sets:
                self._sets[0] = TrainingSet.folder(self.data_path, progress=self.progress and self.is_main)
            return self._sets[0]
        n = RECIPES[self.recipe][stage if stage in RECIPES[self.recipe] else "decoder"].n_train
        if n not in self._sets:
            self._sets[n] = TrainingSet.catalogue(n, progress=self.progress and self.is_main)
        return self._sets[n]

    @property
    def is_main(self) -> bool:
        return self.info is None or self.info.is_main

    def say(self, message: str) -> None:
        if self.is_main:
            print(f"[train] {message}", flush=True)

    # ------------------------------------------------------------------------------------------------- running
    def run(self, stages: str | list[str]) -> dict:
        """Train ``stages`` (``"all"``, a name, or a list) and return the run's report."""
        from dalle2_edu.distributed import barrier, init_distributed
        from dalle2_edu.runlock import RunLock

        names = resolve_stages(stages, "catalogue" if self.data_path is None else "folder")
        if isinstance(self.steps, int) and len([n for n in names if n != "evaluate"]) != 1:
            raise TrainingError("--steps sets one stage's steps: name a single stage (e.g. train decoder --steps 500)")
        from dalle2_edu.distributed import is_initialized

        joined_here = not is_initialized()
        self.info = init_distributed(self.device)
        self.device = str(self.info.device)
        lock = None
        try:
            failure = None
            if self.is_main:  # rank 0 checks and locks OUT; every rank learns whether that worked (none waits forever)
                try:
                    check_out_folder(self.out, self.overwrite_shipped)
                    lock = RunLock(self.out, what=self.command).acquire()
                except Exception as err:
                    failure = err
            if self.info.distributed:
                from dalle2_edu.distributed import broadcast_object

                failure = broadcast_object(failure)
            if failure is not None:
                raise failure
            report = _load_json(self.out / REPORT) if self.is_main else {}
            for stage in names:
                data = self.data_for(stage if stage != "evaluate" else "decoder")
                if self.is_main:
                    check_same_data(self.out, data)
                    report.update(command=self.command, recipe=self.recipe, seed=self.seed, data=data.describe())
                    report.setdefault("stages", {})
                if stage == "evaluate":
                    result = self.evaluate(data) if self.is_main else None
                else:
                    result = self.train_stage(stage, data)
                if self.is_main:
                    report["stages"][stage] = result
                    report["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
                    _write_json(self.out / REPORT, report)
                barrier()
            self.say(f"done: checkpoints and report in {self.out}/ (report: {self.out / REPORT})")
            return report
        finally:
            if lock is not None:
                lock.release()
            if joined_here:
                from dalle2_edu.distributed import cleanup

                cleanup()  # leave the process group this run joined (a no-op when alone)

    def trained_against(self, stage: str, settings, data: TrainingSet) -> dict:
        upstream = {}
        for up in UPSTREAM[stage]:
            path = self.out / STAGE_FILES[up]
            if not path.exists():
                data_arg = f" --data {self.data_path}" if self.data_path else ""
                raise TrainingError(
                    f"the {stage} is trained on {up.upper() if up == 'clip' else up} embeddings, and '{path}' does "
                    f"not exist yet: first run `python -m dalle2_edu train {up} --out {self.out}{data_arg}` (or "
                    f"`train all`), which writes it there"
                )
            upstream[up] = _digest(path)
        against = {"data": data.fingerprint, "settings": settings.to_dict(), "seed": self.seed, "upstream": upstream}
        if stage == "decoder" and self.init_decoder is not None:
            against["init_decoder"] = _digest(self.init_decoder)
        if self.precision != "auto":  # a forced precision is part of what was trained (auto: as every run before it)
            against["precision"] = self.precision
        return against

    def train_stage(self, stage: str, data: TrainingSet) -> dict:
        """Train one stage (resuming or restarting as its provenance says), grade it, save it; return its summary."""
        from dalle2_edu.distributed import barrier

        n_pictures = len(data) if data.kind == "folder" else None
        steps = self.steps.get(stage) if isinstance(self.steps, dict) else self.steps
        settings = recipe_for(self.recipe, stage, n_pictures=n_pictures, steps=steps)
        against = self.trained_against(stage, settings, data)
        weights = self.out / STAGE_FILES[stage]
        json_path = weights.with_suffix(".json")
        run_dir = self.out / "runs" / stage
        if weights.exists() and _load_json(json_path).get("trained_against") == against:
            self.say(f"{stage}: up to date ({weights}, trained against the same data, settings and upstream)")
            return {"weights": str(weights), "report": str(json_path), "skipped": "up to date"}
        marker = run_dir / "trained_against.json"
        if self.is_main:
            if run_dir.exists() and _load_json(marker) != against:
                old = _move_aside(run_dir)
                self.say(f"{stage}: its earlier run was trained against other data, settings or upstream weights "
                         f"(e.g. a retrained CLIP); moved it to {old} and training afresh")  # fmt: skip
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(marker, against)
        barrier()
        self.say(f"{stage}: {settings.steps} steps, batch {settings.batch_size}, lr {settings.lr:g} "
                 f"({self.recipe} recipe) on {data.name}; checkpoints in {run_dir}")  # fmt: skip
        ctx = StageContext(stage, settings, data, self.out, run_dir, device=self.device, precision=self.precision,
                           seed=self.seed, progress=self.progress, quick=self.recipe == "tiny",
                           init_decoder=self.init_decoder if stage == "decoder" else None)  # fmt: skip
        train, grade = STAGES[stage]
        start = time.perf_counter()
        model, trainer = train(ctx)
        seconds = time.perf_counter() - start
        loop = training_speed(trainer)
        summary = {"weights": str(weights), "report": str(json_path), "train_seconds": round(seconds, 1), **loop}
        if self.is_main:
            model = model.eval()
            with torch.no_grad():
                grades = grade(ctx, model)
            report = {
                "stage": stage,
                "command": self.command,
                "recipe": self.recipe,
                "weights": "EMA",
                "settings": settings.to_dict(),
                "trained_against": against,
                "data": data.describe(),
                "final_loss": final_loss(trainer),
                "train_seconds": round(seconds, 1),
                **loop,
                "world_size": self.info.world_size if self.info else 1,
                "device": self.device,
                "precision": _precision_name(trainer),
                "grade": grades,
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
                "date": datetime.date.today().isoformat(),
            }
            if weights.exists():  # weights trained against something else: keep them, never overwrite them
                kept = _move_aside_files(weights, run_dir.parent / f"{stage}.replaced")
                self.say(f"{stage}: the weights it replaces were moved to {kept}")
            _save(stage, model.cpu(), weights, report)
            summary.update(final_loss=report["final_loss"], grade=grades)
            self.say(f"{stage}: done in {seconds:.0f} s; weights {weights}, report {json_path}")
        barrier()
        return summary

    def evaluate(self, data: TrainingSet) -> dict:
        """Grade the finished pipeline in ``OUT``: attribute fidelity on the catalogue, CLIP retrieval on a folder."""
        from dalle2_edu.pipeline import UnCLIP

        start = time.perf_counter()
        settings = EVALUATION[self.recipe]
        pipe = UnCLIP.from_pretrained(self.out, upsampler=False, device=self.device)
        with torch.no_grad():
            if data.kind == "catalogue":
                from dalle2_edu.evaluate import evaluate_pipeline

                report = evaluate_pipeline(pipe, n=settings["n"], seed=self.seed, upsample=False,
                                           steps=settings["steps"], progress=self.progress,
                                           sampler=EVALUATION_SAMPLER)  # fmt: skip
            else:
                report = evaluate_folder(pipe, data.captions, n=settings["n"], steps=settings["steps"], seed=self.seed,
                                         prompts=4 if self.recipe == "tiny" else 16)
        report["seconds"] = round(time.perf_counter() - start, 1)
        self.say("evaluate: " + json.dumps({k: v for k, v in report.items() if k in ("seen", "heldout", "retrieval")}))
        return report


def evaluate_folder(pipe, captions: list[str], n: int = 2, steps: int = 25, seed: int = 0, prompts: int = 16,
                    sampler: str = EVALUATION_SAMPLER) -> dict:  # fmt: skip
    """Generate ``n`` pictures for up to ``prompts`` distinct captions of a folder and read them back with the
    pipeline's own CLIP: how often is a generated picture closest to its own prompt among all the prompts?"""
    distinct = sorted(set(captions))
    pick = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))[:prompts].tolist()
    chosen = [distinct[i] for i in sorted(pick)]
    out = pipe.generate(chosen, n=n, steps=steps, seed=seed, upsample=False, sampler=sampler)
    sim = pipe.clip.encode_image(out.tensors) @ pipe.clip.encode_text(chosen).T  # (P·n, P)
    own = torch.arange(len(chosen)).repeat_interleave(n)
    accuracy = (sim.argmax(dim=1).cpu() == own).float().mean().item()
    return {"retrieval": {"accuracy": round(accuracy, 4), "chance": round(1 / len(chosen), 4),
                          "prompts": len(chosen), "per_prompt": n}}  # fmt: skip


def check_checkpoint_set(folder: str | Path) -> None:
    """Refuse a checkpoint folder whose prior or decoder was trained against another CLIP than the one beside it.

    Reads the ``trained_against`` record each stage's JSON holds (files without one are not checked).
    :raises ValueError: naming the mismatched stage and the command that retrains it.
    """
    folder = Path(folder)
    clip_path = folder / STAGE_FILES["clip"]
    if not clip_path.exists():
        return
    clip_digest = None
    for stage in ("prior", "decoder"):
        record = _load_json((folder / STAGE_FILES[stage]).with_suffix(".json")).get("trained_against") or {}
        wanted = (record.get("upstream") or {}).get("clip")
        if wanted is None:
            continue
        clip_digest = clip_digest or _digest(clip_path)
        if wanted != clip_digest:
            raise ValueError(
                f"'{folder / STAGE_FILES[stage]}' was trained against another CLIP (sha256 {wanted[:12]}…) than "
                f"'{clip_path}' (sha256 {clip_digest[:12]}…), so its embeddings would not match: retrain it with "
                f"`python -m dalle2_edu train {stage} --out {folder}`, or put back the CLIP it was trained with"
            )
