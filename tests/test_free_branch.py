"""The free branch (train.free_branch): a second copy of the tower's last blocks that L_kd does not hold.
Each test names the breakage it catches."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tagger.cli import cli  # noqa: E402
from tagger.modelfile import TaggerModel  # noqa: E402
from train.backbone import load_clip  # noqa: E402
from train.config import TrainConfig, TrainError, tower_defaults  # noqa: E402
from train.free_branch import free_branch  # noqa: E402
from train.losses import make_loss  # noqa: E402
from train.model import HPDVAL, HPDVALConfig, score_images  # noqa: E402
from train.prepare import Prepared  # noqa: E402
from train.runs import load_run, read_json  # noqa: E402
from train.stages import Trainer  # noqa: E402
from train.synthetic import generate_dataset  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "train" / "model_configs" / "tagger-tiny.json")
TAGS = ["dog", "Animals|Cat", "red ball"]
TARGETS = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [1, 0, 0]], np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(load_clip(TINY, None).model.state_dict(), path)
    return path


def _model(checkpoint, free_blocks: int) -> HPDVAL:
    torch.manual_seed(0)
    return HPDVAL(load_clip(TINY, str(checkpoint)), TAGS, teacher=True,
                  config=HPDVALConfig(head="q2l", free_blocks=free_blocks))


def _images(n=4, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("blocks", [1, 3])
def test_an_untrained_free_branch_scores_exactly_as_the_zero_shot_model(checkpoint, blocks):
    # Catches: the copy started from other weights than the tower's blocks (or its LayerNorm or
    # projection), the free head not starting at zero, the branches' mean taken wrongly: the untrained
    # model must stay the zero-shot one, the first candidate selection compares with.
    with_branch, without = _model(checkpoint, blocks), _model(checkpoint, 0)
    assert free_branch(with_branch.student) is not None and free_branch(without.student) is None
    with torch.no_grad():
        ours = score_images(with_branch.export_parts(), _images())
        theirs = score_images(without.export_parts(), _images())
        bias = free_branch(with_branch.student).blocks[-1].mlp.c_proj.bias  # once trained, they differ
        bias.add_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(3)))
        moved = score_images(with_branch.export_parts(), _images())
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert (moved - ours).abs().max() > 1e-3
    assert free_branch(with_branch.teacher) is None  # the teacher is the pretrained tower alone


def _trainer(checkpoint, tmp_path, free_blocks: int) -> Trainer:
    clip = load_clip(TINY, str(checkpoint))
    settings = TrainConfig(labels="x", data="x", backbone=TINY, pretrained=str(checkpoint), free_blocks=free_blocks)
    loss_fn = make_loss("bce", TARGETS.sum(axis=0), len(TARGETS))
    model = HPDVAL(clip, TAGS, class_bias=loss_fn.class_bias, teacher=True,
                   config=HPDVALConfig(head="q2l", free_blocks=free_blocks))
    data = Prepared(TAGS, None, TARGETS, np.arange(len(TARGETS)), np.arange(0), {})
    return Trainer(settings, model, loss_fn, data, torch.device("cpu"), tmp_path, lambda line: None, False)


def test_each_branch_learns_from_its_own_loss_and_l_kd_holds_the_held_one_only(checkpoint, tmp_path):
    # Catches: one loss on the branches' mean (the branches then learn as one model), L_kd on the free
    # branch, or a branch scored from the other's features.
    trainer = _trainer(checkpoint, tmp_path, free_blocks=2)
    model = trainer.model
    with torch.no_grad():  # trained heads, so every path carries a gradient
        for head in model.heads():
            head.classifier.normal_(std=0.1)
        for p in model.student.parameters():  # and a student that has drifted from the teacher
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    model.set_stage(1)
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    terms = trainer.stage1_loss(pixels, torch.from_numpy(TARGETS).float(), use_kd=True)
    assert set(terms) == {"cls", "cls_free", "kd"}

    branch = free_branch(model.student)
    free = [p for p in branch.parameters()]
    free_ids = {id(p) for p in free}
    blocks = model.student.transformer.resblocks
    held_only = [p for m in (*blocks[-2:], model.student.ln_post, model.head) for p in m.parameters()] \
        + [model.student.proj]
    shared = list(blocks[0].parameters())
    assert not free_ids & {id(p) for p in held_only}

    def reaches(term: str, params) -> bool:
        grads = torch.autograd.grad(terms[term], params, retain_graph=True, allow_unused=True)
        return any(g is not None and g.abs().max() > 0 for g in grads)

    assert reaches("cls_free", free) and not reaches("cls_free", held_only)
    assert reaches("cls", held_only) and not reaches("cls", free)
    assert reaches("kd", held_only) and not reaches("kd", free)
    assert all(reaches(term, shared) for term in terms)  # the first blocks serve both branches


def test_the_free_branch_is_picked_where_l_kd_holds_the_tower_and_kept_as_given():
    # Catches: a free branch without L_kd (its two copies would learn alike, for twice the cost), a
    # user's --free-blocks overridden, or a size the tower does not have accepted.
    base = TrainConfig(labels="x", data="x")
    assert tower_defaults(base, 12).free_blocks >= 1
    assert tower_defaults(TrainConfig(labels="x", data="x", kd=False), 12).free_blocks == 0
    assert tower_defaults(TrainConfig(labels="x", data="x", kd_weight=0.0), 12).free_blocks == 0
    assert tower_defaults(TrainConfig(labels="x", data="x", stages=(2,)), 12).free_blocks == 0
    assert tower_defaults(TrainConfig(labels="x", data="x", free_blocks=2), 12).free_blocks == 2
    assert tower_defaults(TrainConfig(labels="x", data="x", free_blocks=0), 12).free_blocks == 0
    with pytest.raises(TrainError, match="13: this tower has 12 blocks"):
        tower_defaults(TrainConfig(labels="x", data="x", free_blocks=13), 12)


@pytest.mark.slow
def test_a_trained_free_branch_exports_both_copies_with_parity_and_its_blocks_in_int8(checkpoint, tmp_path):
    # Catches: an exported graph that scores one copy only (PyTorch's scores would differ), or the free
    # copy's blocks left in fp32 by int8: export.quantize keeps everything from the tower's projection on
    # in fp32, so the free blocks must run before it (train.free_branch.encode_both).
    data = generate_dataset(tmp_path / "data", n_train=60, n_test=0, seed=3)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [str(a) for a in (
        "train", "--labels", data.labels_file, "--data", data.train_dir, "--annotations", data.train_csv,
        "--backbone", TINY, "--pretrained", checkpoint, "--out", out, "--epochs", 1, "--stage2-epochs", 1,
        "--no-refit", "--no-keywords", "--drop-empty", "--quiet")])
    assert result.exit_code == 0, result.output
    assert read_json(out / "config.json")["model"]["free_blocks"] == 3  # picked: every block, L_kd being on
    run = load_run(out)
    assert free_branch(run.parts.visual) is not None
    images = run.validation_images()
    with torch.no_grad():
        reference = score_images(run.parts, torch.from_numpy(images)).numpy()

    files = {}
    for variant in ("fp32", "int8"):
        files[variant] = tmp_path / f"{variant}.onnx"
        args = ["export", str(out), "--out", str(files[variant])] + (["--quantize", "int8"] if variant == "int8" else [])
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert np.abs(TaggerModel(files["fp32"], device="cpu").predict(images) - reference).max() <= 1e-4

    def scopes(node) -> str:
        return {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes", "")

    free_linears = [node.name for node in onnx.load(str(files["fp32"])).graph.node
                    if node.op_type in ("MatMul", "Gemm") and "free_branch.blocks." in scopes(node)
                    and "aten.linear" in {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.fx_node", "")]
    assert len(free_linears) == 4 * 3  # attention in and out, MLP in and out, per block
    quantized = {node.name for node in onnx.load(str(files["int8"])).graph.node if node.op_type == "MatMulInteger"}
    # The quantizer names its node after the original: NAME_quant, or NAME_MatMul_quant for a Gemm.
    assert all(any(q.startswith(f"{name}_") for q in quantized) for name in free_linears)
