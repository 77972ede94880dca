"""Keyed signatures of model files (cxr.signing, cxr.modelfile.sign_model, cxr sign)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cxr.cli import main
from cxr.modelfile import ModelFileError, load_model, read_model_info, save_model, sign_model
from cxr.models import ModelSpec, Preprocessing, build_model
from cxr.signing import (
    KEY_ENV,
    KEY_FILE_ENV,
    SigningError,
    key_id,
    signature_for,
    signing_key,
    verify_signature,
)

KEY = "a-long-enough-secret-key-0123456789"
OTHER = "another-secret-key-of-enough-length"


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.fixture
def model():
    torch.manual_seed(0)
    spec = ModelSpec(labels=("A", "B"), backbone="cxr-small-cnn", preprocessing=Preprocessing(32))
    return build_model(spec).eval()


def test_the_key_comes_from_the_variable_or_a_file(tmp_path):
    assert signing_key({}) is None
    assert signing_key({KEY_ENV: KEY}) == KEY.encode()
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY.encode() + b"\n")
    assert signing_key({KEY_FILE_ENV: str(key_file)}) == KEY.encode()
    with pytest.raises(SigningError, match="not both"):
        signing_key({KEY_ENV: KEY, KEY_FILE_ENV: str(key_file)})
    with pytest.raises(SigningError, match=f"{KEY_FILE_ENV}=.*missing.*cannot read"):
        signing_key({KEY_FILE_ENV: str(tmp_path / "missing")})
    with pytest.raises(SigningError, match="holds 5 bytes; a signing key needs at least 16"):
        signing_key({KEY_ENV: "short"})


def test_verification_rules():
    digest = "ab" * 32
    key = KEY.encode()
    good = signature_for(digest, key)
    assert good["key_id"] == key_id(key) and len(good["mac"]) == 64
    assert verify_signature(digest, good, None) is False  # no key: nothing checked
    assert verify_signature(digest, good, key) is True
    with pytest.raises(SigningError, match="is not signed"):
        verify_signature(digest, None, key)
    with pytest.raises(SigningError, match="another key"):
        verify_signature(digest, good, OTHER.encode())
    with pytest.raises(SigningError, match="does not match"):
        verify_signature("cd" * 32, good, key)
    with pytest.raises(SigningError, match="not a hmac-sha256"):
        verify_signature(digest, {"scheme": "md5"}, key)


def test_a_signed_file_loads_with_its_key_and_refuses_others(tmp_path, model, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    path = save_model(tmp_path / "m.safetensors", model)
    assert read_model_info(path).signed_by == key_id(KEY.encode())
    assert load_model(path).labels == ("A", "B")
    monkeypatch.setenv(KEY_ENV, OTHER)
    with pytest.raises(ModelFileError, match=r"m\.safetensors: was signed with another key"):
        load_model(path)
    monkeypatch.delenv(KEY_ENV)
    assert load_model(path).labels == ("A", "B")  # without a key, nothing is checked


def test_unsigned_files_are_refused_when_a_key_is_configured(tmp_path, model, monkeypatch):
    path = save_model(tmp_path / "m.safetensors", model)
    assert read_model_info(path).signed_by == ""
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ModelFileError, match="is not signed, and a signing key is configured"):
        load_model(path)
    sign_model(path)
    assert load_model(path).labels == ("A", "B")


def test_a_forged_file_with_a_recomputed_checksum_fails_its_signature(tmp_path, model, monkeypatch):
    """The attack the checksum alone cannot stop: edit the labels, recompute the SHA-256."""
    from cxr.modelformat.safetensors_file import digest

    monkeypatch.setenv(KEY_ENV, KEY)
    path = save_model(tmp_path / "m.safetensors", model)
    with safe_open(str(path), "pt") as fh:
        header = fh.metadata()
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    meta = json.loads(header["cxr"])
    meta["spec"]["labels"] = ["Pneumothorax", "Normal"]
    meta["sha256"] = digest(meta, tensors)
    header["cxr"] = json.dumps(meta)
    save_file(tensors, str(path), metadata=header)  # keeps the old signature
    with pytest.raises(ModelFileError, match="signature does not match"):
        load_model(path)
    monkeypatch.delenv(KEY_ENV)
    assert load_model(path).labels == ("Pneumothorax", "Normal")  # what the checksum allows


def test_cxr_sign_command(tmp_path, model, monkeypatch, capsys):
    path = save_model(tmp_path / "m.safetensors", model)
    assert main(["sign", str(path)]) == 2
    assert "no signing key: set CXR_SIGNING_KEY" in capsys.readouterr().err
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    out = tmp_path / "signed.safetensors"
    assert main(["sign", str(path), "--out", str(out)]) == 0
    assert key_id(KEY.encode()) in capsys.readouterr().out
    assert load_model(out).labels == ("A", "B")
    with pytest.raises(ModelFileError, match="is not signed"):
        load_model(path)  # the original is left as it was
