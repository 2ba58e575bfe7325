"""Shards on object storage, end to end against a local S3-compatible server (moto's server mode on 127.0.0.1):
prepare straight to s3://, fit streaming from it, exact resume; a wrong bucket or missing credentials is one line."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TrainingRecorder

from ouro.config import OuroConfig
from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare
from ouro.data.pretrain import PretrainDataModule
from ouro.errors import DataError
from ouro.module import OuroLM

pytest.importorskip("moto")
WORDS = "alpha beta gamma delta loop model token stream shard chunk exit gate step".split()
SECRET = "not-a-real-secret-but-never-printed"
VOCAB = 259  # what the 200-merge BPE below ends up with (checked against the manifest)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    patch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("s3")
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-credentials"),
        "AWS_CONFIG_FILE": str(root / "no-config"),
        "OURO_CACHE": str(root / "cache"),
    }.items():
        patch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="corpus")
    rng = random.Random(0)
    (root / "in").mkdir()
    for f in range(3):
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(120)]
        (root / "in" / f"{f}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = root / "tokenizer.json"
    tokenizer.write_text(train_tokenizer(sorted((root / "in").iterdir()), vocab_size=200).to_str())
    yield {"root": root, "tokenizer": str(tokenizer), "inputs": str(root / "in")}
    patch.undo()
    server.stop()


def _objects(prefix: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="corpus", Prefix=prefix).get("Contents", [])]
    return {k[len(prefix) :]: client.get_object(Bucket="corpus", Key=k)["Body"].read() for k in keys}


def _fit(source: str, root: Path, max_steps: int, cache: Path, ckpt_path=None, save_every=None):
    L.seed_everything(0)
    model = OuroLM(model=OuroConfig.preset("tiny", vocab_size=VOCAB), loss_chunk_size=256)
    recorder = TrainingRecorder()
    callbacks = [recorder]
    if save_every:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=root, every_n_train_steps=save_every, save_top_k=-1, filename="{step}"
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=bool(save_every),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=root,
    )
    data = PretrainDataModule(
        sources=[source], seq_len=16, batch_size=2, num_workers=1, seed=3, cache_dir=str(cache)
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return recorder.batches, data


def test_prepare_to_s3_then_fit_streaming_and_resume_exactly(s3, tmp_path):
    url = "s3://corpus/shards/web"
    manifest = prepare([s3["inputs"]], url, tokenizer=s3["tokenizer"], num_workers=2, chunk_tokens=1024)
    local = tmp_path / "local"
    prepare([s3["inputs"]], str(local), tokenizer=s3["tokenizer"], num_workers=1, chunk_tokens=1024)
    uploaded = _objects("shards/web/")
    assert uploaded == {p.name: p.read_bytes() for p in local.iterdir()}, "the same bytes as a local prepare"
    assert manifest.token_dtype == "uint16" and manifest.vocab_size == VOCAB
    cache = tmp_path / "cache"
    n, k = 6, 2
    full, data = _fit(url, tmp_path / "run", n, cache, save_every=k)
    assert data.tokenizer_path and Path(data.tokenizer_path).read_bytes() == uploaded["tokenizer.json"]
    assert list((cache).glob("web-*/chunks/chunk-*.bin")), "chunks were streamed into the given cache dir"
    resumed, _ = _fit(url, tmp_path / "resumed", n, cache, ckpt_path=str(tmp_path / "run" / f"step={k}.ckpt"))
    assert len(full) == n and len(resumed) == n - k
    for a, b in zip(full[k:], resumed):
        assert torch.equal(a, b)
    from_local, _ = _fit(str(local), tmp_path / "local-run", n, cache)
    assert all(torch.equal(a, b) for a, b in zip(full, from_local)), (
        "streaming reads what a local folder holds"
    )
    assert prepare([s3["inputs"]], url, tokenizer=s3["tokenizer"], chunk_tokens=1024) == manifest  # no-op


def test_wrong_bucket_and_missing_credentials_are_one_line(s3, tmp_path, monkeypatch):
    for call in (
        lambda: prepare([s3["inputs"]], "s3://no-such-bucket/x", tokenizer=s3["tokenizer"]),
        lambda: PretrainDataModule(sources=["s3://no-such-bucket/x"], cache_dir=str(tmp_path)).setup("fit"),
    ):
        with pytest.raises(DataError, match="the bucket 'no-such-bucket' does not exist") as info:
            call()
        assert "\n" not in str(info.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DataError, match="no credentials found") as info:
        PretrainDataModule(sources=["s3://corpus/shards/web"], cache_dir=str(tmp_path)).setup("fit")
    assert "\n" not in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(DataError, match="no credentials found"):
        prepare([s3["inputs"]], "s3://corpus/elsewhere", tokenizer=s3["tokenizer"])


def test_a_prefix_with_foreign_objects_is_not_overwritten(s3):
    import boto3

    boto3.client("s3").put_object(Bucket="corpus", Key="theirs/report.pdf", Body=b"keep me")
    with pytest.raises(DataError, match="did not write"):
        prepare([s3["inputs"]], "s3://corpus/theirs", tokenizer=s3["tokenizer"], overwrite=True)
    assert _objects("theirs/") == {"report.pdf": b"keep me"}
