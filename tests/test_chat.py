"""ChatML written once (`ouro.chat`): training data and inference render a conversation to the same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ouro.chat import CHATML_TEMPLATE, IM_END, ChatRenderer, format_chat
from ouro.data.builtin import train_tokenizer
from ouro.data.prepare import prepare
from ouro.data.sft import SFTDataModule
from ouro.errors import DataError
from ouro.generation.cli import chat_prompt_ids

SYSTEM, QUESTION = "you answer briefly", "what is 3 plus  4?\n"
ANSWER = "<think>\n3 and 4 make 7\n</think>\n it is 7"
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": ANSWER},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer

    folder = tmp_path_factory.mktemp("chattok")
    corpus = folder / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": json.dumps(CONVERSATION) + f" {i}"}) + "\n" for i in range(30))
    )
    path = folder / "tokenizer.json"
    path.write_text(train_tokenizer([corpus], vocab_size=300).to_str())
    return Tokenizer.from_file(str(path))


def _sft_block(tmp_path: Path, tokenizer) -> tuple[list[int], list[int]]:
    """Input ids and labels of the first training block `ouro prepare --format sft` + `SFTDataModule` produce."""
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    out = tmp_path / "sft"
    prepare(
        [str(tmp_path / "chat.jsonl")],
        str(out),
        tokenizer=str(tmp_path / "tokenizer.json"),
        format="sft",
        seq_len=127,
        num_workers=1,
        chunk_tokens=512,
    )
    data = SFTDataModule(sources=[str(out)], num_workers=0, batch_size=1, shuffle=False)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    return batch["input_ids"][0].tolist(), batch["labels"][0].tolist()


def test_training_data_and_generation_render_a_conversation_to_the_same_tokens(tmp_path, tokenizer):
    trained_ids, labels = _sft_block(tmp_path, tokenizer)
    prompt = chat_prompt_ids(
        tokenizer, QUESTION, system=SYSTEM
    )  # what `ouro generate --chat` feeds the model
    reply = tokenizer.encode(ANSWER, add_special_tokens=False).ids + [tokenizer.token_to_id(IM_END)]
    assert trained_ids[: len(prompt) + len(reply)] == prompt + reply
    # What trains is exactly the reply the model must generate after that prompt (labels are next tokens).
    counted = [(i + 1, t) for i, t in enumerate(labels) if t != -100]
    assert [t for _, t in counted] == reply and counted[0][0] == len(prompt)


def test_the_three_views_of_chatml_agree(tokenizer):
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(CHATML_TEMPLATE)
    for generation_prompt in (False, True):
        text = template.render(messages=CONVERSATION[:2], add_generation_prompt=generation_prompt)
        assert text == format_chat(CONVERSATION[:2], add_generation_prompt=generation_prompt)
    renderer = ChatRenderer(tokenizer)
    # The export's template text, tokenized, equals the tokens built from the pieces.
    assert (
        tokenizer.encode(format_chat(CONVERSATION, add_generation_prompt=False)).ids
        == renderer.render(CONVERSATION)[0]
    )
    assert tokenizer.encode(format_chat(CONVERSATION[:2])).ids == renderer.render_prompt(CONVERSATION[:2])


def test_a_tokenizer_without_chatml_tokens_is_refused_with_the_fix():
    from tokenizers import Tokenizer, models

    plain = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1}, unk_token="<|endoftext|>"))
    with pytest.raises(DataError, match="ChatML special tokens.*builtin"):
        ChatRenderer(plain)
