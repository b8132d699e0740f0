"""`tagger tag --ray`: the same discover → decode → infer → write run, spread over a Ray cluster.

Discovery and the up-to-date check run on the driver (`TagRun._needing_work`, the one-machine rule),
which hands the paths to Ray Data in chunks put in the object store: the driver's own memory holds
object references, not paths or pixels, whatever the number of photos. Then, streaming:

- decoding as CPU map tasks (`tagger.pipeline.decode_one`, the one-machine decoder), on every core;
- inference in a pool of actors, each holding one ONNX Runtime session (one actor per GPU where the
  cluster has GPUs, `--batch-size` photos per call); the model file travels through the object store,
  so nodes need not see the driver's model store;
- writing as map tasks with the one-machine writers and rules (`TagRun._write`): the photos live on
  storage every node sees.

Each write task returns its counts and failures; the driver adds them into the usual Summary. Ray is
imported only here, and only when `--ray` is asked for (`pip install "tagger[cluster]"`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from tagger.discover import iter_photos
from tagger.errors import ModelError, TaggerError
from tagger.images import Preprocess
from tagger.modelfile import TaggerModel
from tagger.pipeline import decode_one
from tagger.tagging import Decision, Summary, TagRun
from tagger.writers import ModelRef, create_writer

CHUNK = 2048  # paths per object-store block handed from discovery to Ray Data
DECODE_BATCH = 16  # photos per decode task: enough to amortise a task, small enough to spread
WRITE_BATCH = 64  # photos per write task (an embed writer starts one exiftool per task)
CPU_ACTOR_THREADS = 4  # ONNX Runtime threads of an inference actor on CPU nodes
# What a decode task asks of a node's memory: a half-size demosaic of a 50 MP RAW file peaks near this.
# The request also keeps Ray from fusing decoding into the inference actors (it fuses stages that ask
# for the same resources), which would decode on the actors' cores only instead of on every core.
DECODE_MEMORY = 256 * 2**20


def missing_ray() -> TaggerError:
    return TaggerError(None, '--ray needs Ray Data: pip install "tagger[cluster]"')


@dataclass(frozen=True)
class WriteSettings:
    """What a write task needs to rebuild the run's writers and tag decisions on a worker."""

    names: tuple[str, ...]
    xmp_name: str
    keyword_prefix: str | None
    backup: bool
    decision: Decision
    model_ref: ModelRef
    dry_run: bool

    @classmethod
    def for_run(cls, run: TagRun, names: Iterable[str], xmp_name: str = "extension",
                keyword_prefix: str | None = None, backup: bool = False) -> "WriteSettings":
        info = run.model.info
        return cls(tuple(names), xmp_name, keyword_prefix, backup, run.decision,
                   ModelRef(info.name, info.sha256), run.dry_run)


def _chunks(paths: Iterable[Path], size: int) -> Iterator[list[str]]:
    it = iter(paths)
    while chunk := [str(p) for p in islice(it, size)]:
        yield chunk


# -- the three stages, run on the workers ----------------------------------------------------------
def decode_batch(batch: dict, spec: Preprocess) -> dict:
    """Decode a batch of paths; a photo that fails gets zero pixels and its reason in "error"."""
    paths = [str(p) for p in batch["path"]]
    pixels = np.zeros((len(paths), spec.size, spec.size, 3), np.uint8)
    size = np.zeros(len(paths), np.int64)
    mtime = np.zeros(len(paths), np.float64)
    errors = [""] * len(paths)
    for i, path in enumerate(paths):
        try:
            decoded = decode_one(Path(path), spec)
        except TaggerError as exc:
            errors[i] = exc.reason
            continue
        except MemoryError:
            errors[i] = "out of memory while decoding"
            continue
        pixels[i], size[i], mtime[i] = decoded.pixels, decoded.stat.st_size, decoded.stat.st_mtime
    return {"path": np.array(paths, dtype=object), "size": size, "mtime": mtime, "pixels": pixels,
            "error": np.array(errors, dtype=object)}


class Infer:
    """An inference actor: one ONNX Runtime session over the model bytes, for the actor's lifetime."""

    def __init__(self, model_box: list, sha256: str, device: str, threads: int | None):
        import ray

        folder = Path(tempfile.mkdtemp(prefix="tagger-model-"))
        path = folder / "model.onnx"
        try:
            path.write_bytes(ray.get(model_box[0]))
            self.model = TaggerModel(path, device=device, threads=threads, spinning=False)
        finally:  # the session holds the model in memory; no copy is left behind on the node
            shutil.rmtree(folder, ignore_errors=True)
        if self.model.info.sha256 != sha256:  # the bytes that arrived are not the model asked for
            raise ModelError(path, "model file changed on its way to the worker")

    def __call__(self, batch: dict) -> dict:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        scores = np.full((len(ok), len(self.model.labels)), np.nan, np.float32)
        if ok.any():
            scores[ok] = self.model.predict(np.ascontiguousarray(batch["pixels"][ok]))
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["scores"] = scores
        return out


def write_batch(batch: dict, settings: WriteSettings) -> dict:
    """Write each photo's outputs with the one-machine writers; one summary row for the batch."""
    writers = [] if settings.dry_run else [
        create_writer(name, xmp_name=settings.xmp_name, keyword_prefix=settings.keyword_prefix,
                      backup=settings.backup) for name in settings.names]
    lines: list[str] = []
    run = TagRun(model=None, writers=writers, decision=settings.decision, batch_size=1, workers=1,
                 dry_run=settings.dry_run, emit=lines.append)
    summary = Summary()
    try:
        for path, size, mtime, error, scores in zip(batch["path"], batch["size"], batch["mtime"],
                                                    batch["error"], batch["scores"]):
            if error:
                summary.failed.append(TaggerError(str(path), str(error)))
                continue
            run.tag_one(Path(str(path)), int(size), float(mtime), scores, settings.model_ref, summary)
    finally:
        for writer in writers:
            writer.close()
    return {"photos": np.array([len(batch["path"])]), "tagged": np.array([summary.tagged]),
            "failed": np.array([json.dumps([[e.path, e.reason] for e in summary.failed])], dtype=object),
            "not_written": np.array([json.dumps([[e.path, e.reason] for e in summary.not_written])], dtype=object),
            "lines": np.array(["\n".join(lines)], dtype=object)}


# -- the driver --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this run joined, and the inference pool it gets: one actor per GPU when the
    cluster has GPUs and --device allows them, else one CPU actor per 2·CPU_ACTOR_THREADS cores (the
    other cores decode and write)."""

    actors: int
    gpus: int
    cpus: int
    threads: int | None  # ONNX Runtime threads per CPU actor

    @classmethod
    def join(cls, address: str | None, device: str) -> "Cluster":
        """Join the cluster at `address` (else RAY_ADDRESS, Ray's own variable), else start a local Ray."""
        try:
            import ray
            import ray.data  # noqa: F401 - the extra brings both
        except ImportError:
            raise missing_ray() from None
        if not ray.is_initialized():
            if address or os.environ.get("RAY_ADDRESS"):
                ray.init(address=address or None, logging_level="WARNING", log_to_driver=False)
            else:
                ray.init(logging_level="WARNING", include_dashboard=False, log_to_driver=False)
        resources = ray.cluster_resources()
        cpus = int(resources.get("CPU", 1))
        gpus = int(resources.get("GPU", 0)) if device in ("auto", "cuda") else 0
        if device == "cuda" and not gpus:
            raise TaggerError(None, "--device cuda: the Ray cluster has no GPU")
        if gpus:
            return cls(gpus, gpus, cpus, None)
        return cls(max(1, cpus // (2 * CPU_ACTOR_THREADS)), 0, cpus, min(CPU_ACTOR_THREADS, max(1, cpus)))

    @property
    def actor_device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def driver_choice(self, precision: str) -> tuple[str, str]:
        """(device, precision) for the driver's copy of the model, which only checks it and names the
        variant the actors run: fp32 for GPU actors (as one machine picks on a GPU), the int8 variant
        for CPU actors when `auto` allows it."""
        if self.gpus and precision == "auto":
            return "cpu", "fp32"
        return "cpu", precision

    def describe(self) -> str:
        pool = f"{self.actors} GPU actor{'s' * (self.actors > 1)}" if self.gpus else \
            f"{self.actors} CPU actor{'s' * (self.actors > 1)} of {self.threads} threads"
        return f"Ray cluster of {self.cpus} CPUs: {pool}, decoding and writing on the other cores"

    def tag(self, run: TagRun, roots: Iterable[str | os.PathLike], exclude: Iterable[str],
            settings: WriteSettings) -> Summary:
        """`TagRun.run` on the cluster; the same Summary and the same outputs."""
        try:
            return self._tag(run, roots, exclude, settings)
        finally:
            for writer in run.writers:  # the driver's copies, used for the up-to-date check
                writer.close()

    def _tag(self, run: TagRun, roots, exclude, settings: WriteSettings) -> Summary:
        import pyarrow as pa
        import ray
        import ray.data

        summary = Summary()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts photos
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a plan and a timing per run
        model_ref = settings.model_ref
        try:
            todo = run._needing_work(iter_photos(roots, exclude), model_ref, summary)
            blocks = [ray.put(pa.table({"path": chunk})) for chunk in _chunks(todo, CHUNK)]
            if not blocks:
                return summary
            model_box = [ray.put(run.model.path.read_bytes())]
            resources = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
            ds = (ray.data.from_arrow_refs(blocks)
                  .map_batches(decode_batch, fn_kwargs={"spec": run.model.info.preprocess}, batch_size=DECODE_BATCH,
                               batch_format="numpy", num_cpus=1, memory=DECODE_MEMORY)
                  .map_batches(Infer, fn_constructor_args=(model_box, model_ref.sha256, self.actor_device, self.threads),
                               batch_size=run.batch_size, batch_format="numpy",
                               compute=ray.data.ActorPoolStrategy(size=self.actors), **resources)
                  .map_batches(write_batch, fn_kwargs={"settings": settings}, batch_size=WRITE_BATCH,
                               batch_format="numpy", num_cpus=1))
            for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                for photos, tagged, failed, not_written, lines in zip(
                        out["photos"], out["tagged"], out["failed"], out["not_written"], out["lines"]):
                    summary.tagged += int(tagged)
                    summary.failed.extend(TaggerError(p, r) for p, r in json.loads(failed))
                    summary.not_written.extend(TaggerError(p, r) for p, r in json.loads(not_written))
                    for line in filter(None, str(lines).split("\n")):
                        run.emit(line)
                    run.progress(int(photos))
        except KeyboardInterrupt:
            summary.interrupted = True
        return summary
