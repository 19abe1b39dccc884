"""paperzoo.load_run: a run reloads in one call and computes what the trainer's model computed."""

import pytest
import torch

import paperzoo
from paperzoo.text.tasks import TranslationTask
from paperzoo.train import checkpoint as ckpt
from paperzoo.train.classification import ImageClassificationTask
from paperzoo.train.config import find_recipe


def _capture_models(monkeypatch, task_cls):
    """Keep the models a task builds: the very objects the trainer trains."""
    built = []
    original = task_cls.build_model

    def build(self):
        built.append(original(self))
        return built[-1]

    monkeypatch.setattr(task_cls, "build_model", build)
    return built


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        built = _capture_models(mp, ImageClassificationTask)
        result = paperzoo.train({
            "model": {"name": "resnet18", "args": {"small_input": True, "width": 4}},
            "data": {"dataset": "synthetic", "image_size": 8, "synthetic_size": 64, "batch_size": 16},
            "optim": {"lr": 0.05}, "train": {"epochs": 2, "ema": True, "ema_decay": 0.9, "threads": 1},
            "run": {"out_dir": str(tmp_path_factory.mktemp("runs")), "name": "tiny", "progress": "off",
                    "tensorboard": False, "plots": False}})
    assert result.status == "done" and len(built) == 1
    return result, built[0].eval()


def test_load_run_rebuilds_the_trained_classifier_with_its_classes(image_run):
    result, trained = image_run
    model = paperzoo.load_run(result.run_dir)  # which="final": the weights the trainer ended with
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    assert not model.training and model.classes == ["class0", "class1", "class2", "class3"]
    assert model.meta["model"]["args"]["width"] == 4 and model.checkpoint.parent.name == "final"


def test_load_run_best_and_ema_are_those_checkpoints_weights(image_run):
    result, _ = image_run
    best = paperzoo.load_run(result.run_dir, which="best")
    assert best.checkpoint.parent.name == "best"
    ema = paperzoo.load_run(result.run_dir, ema=True)
    saved = ckpt.read_weights(result.run_dir / "final" / "model.safetensors", ema=True)
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in saved.items())
    plain = paperzoo.load_run(result.run_dir).state_dict()
    assert any(not torch.equal(plain[k], v) for k, v in saved.items())  # the EMA copy differs from the weights
    with pytest.raises(ValueError, match="unknown checkpoint 'newest'"):
        paperzoo.load_run(result.run_dir, which="newest")


def test_load_weights_accepts_a_run_or_checkpoint_directory(image_run):
    result, trained = image_run
    for path in (result.run_dir, result.run_dir / "final"):
        fresh = paperzoo.create_model("resnet18", num_classes=4, in_chans=1, small_input=True, width=4)
        paperzoo.load_weights(fresh, path)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())
    fresh = paperzoo.create_model("resnet18", num_classes=4, in_chans=1, small_input=True, width=4)
    best = ckpt.read_weights(result.run_dir / "best" / "model.safetensors")
    paperzoo.load_weights(fresh, result.run_dir, which="best")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in best.items())


def test_load_run_reloads_a_translation_run_with_its_tokenizers(tmp_path, monkeypatch):
    built = _capture_models(monkeypatch, TranslationTask)
    result = paperzoo.train(find_recipe("translate_en_ko"), overrides=[
        "model.name=transformer_tiny", "model.args={N_enc: 1, N_dec: 1, d_model: 16, d_ff: 32, h: 2}",
        "data.n_train=32", "data.n_val=8", "data.n_test=8", "data.batch_size=16", "data.val_decode=8",
        "decode.max_len=12", "train.epochs=1", "train.threads=1", "run.tensorboard=false", "run.plots=false",
        "run.progress=off", f"run.out_dir={tmp_path}", "run.name=mt"])
    assert result.status == "done"
    model = paperzoo.load_run(result.run_dir)
    assert set(model.tokenizers) == {"src", "tgt"} and not model.training
    src, tgt = torch.randint(4, 20, (2, 7)), torch.randint(4, 20, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(src, tgt), built[0].eval()(src, tgt))
