"""What an endpoint accepts, before any model runs: conversations, generation parameters
(each bounded), and a 4xx naming the field for anything else."""

from __future__ import annotations

import json
import re

import pytest

from training import inference


def test_a_conversation_is_a_request_of_its_own() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "parameters": {"max_new_tokens": 8}}  # fmt: skip
    data = inference.input_fn(json.dumps(body))
    assert data["messages"] == body["messages"] and data["single"] and data["parameters"] == {"max_new_tokens": 8}


@pytest.mark.parametrize(
    "body,needle",
    [
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": "hi"}, "messages must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages[0].content must be a non-empty text"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
         "messages[1]: a system turn may only come first"),
        ({"messages": [{"role": "user", "content": "a"}] * 65}, "at most 64 turns"),
        ({"messages": [{"role": "user", "content": "a"}], "parameters": []}, '"parameters" must be an object'),
        ({"text": "x"}, '"inputs" (a text or a list of texts) or "messages"'),
    ],
)  # fmt: skip
def test_bad_conversations_name_the_turn(body: object, needle: str) -> None:
    with pytest.raises(inference.PayloadError, match=re.escape(needle)):
        inference.input_fn(json.dumps(body))


def test_generation_parameters_are_bounded_and_greedy_by_default() -> None:
    assert inference.generation_options({}) == {"max_new_tokens": 32, "do_sample": False}
    assert inference.generation_options({"max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9}) == {
        "max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
    }  # fmt: skip
    for parameters, needle in [
        ({"max_new_tokens": 0}, "parameters.max_new_tokens must be between 1 and 256"),
        ({"max_new_tokens": 10_000}, "parameters.max_new_tokens must be between 1 and 256"),
        ({"max_new_tokens": 2.5}, "parameters.max_new_tokens must be an integer"),
        ({"max_new_tokens": True}, "parameters.max_new_tokens must be an integer"),
        ({"temperature": -1}, "parameters.temperature must be between 0 and 2"),
        ({"temperature": "hot"}, "parameters.temperature must be a number"),
        ({"top_p": 0}, "parameters.top_p must be between 0.01 and 1"),
        ({"num_beams": 64}, "parameters.num_beams is not a generation parameter"),
    ]:
        with pytest.raises(inference.PayloadError, match=re.escape(needle)):
            inference.generation_options(parameters)


class Template:
    """A tokenizer's chat rendering, as transformers does it, with tuneloop's default."""

    chat_template: str | None = None

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:  # fmt: skip
        import jinja2

        assert self.chat_template and not tokenize
        template = jinja2.Environment(autoescape=False).from_string(self.chat_template)  # nosec B701 - text, not HTML
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt)


def test_the_default_chat_template_splits_a_conversation_where_the_answer_starts() -> None:
    tokenizer = Template()
    assert inference.ensure_chat_template(tokenizer) == "default"
    assert inference.ensure_chat_template(tokenizer) == "base model"  # set now: saved with the model
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}]  # fmt: skip
    prompt, completion = inference.render_chat(tokenizer, chat)
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n" and completion == "Hello!"
    assert inference.chat_prompt(tokenizer, chat[:-1]) == prompt  # serving asks exactly as training taught


def test_stream_true_is_answered_whole_where_the_model_server_does_not_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No context (tuneloop's own server's InvokeEndpoint), or a context from a server
    that is not TorchServe: the whole answer, as text. A bad "stream" is refused."""
    import sys

    monkeypatch.setattr(inference, "stream_fn", lambda data, loaded: iter(["one ", "two"]))
    data = inference.input_fn(json.dumps({"inputs": "x", "stream": True}))
    assert data["stream"] is True
    assert inference.output_fn(inference.predict_fn(data, {})) == ("one two", "text/plain; charset=utf-8")
    monkeypatch.setitem(sys.modules, "ts.protocol.otf_message_handler", None)  # no TorchServe here
    assert inference.predict_fn(data, {}, context=object()) == "one two"
    with pytest.raises(inference.PayloadError, match='"stream" must be true or false'):
        inference.input_fn(json.dumps({"inputs": "x", "stream": 1}))
    error = inference.PayloadError("parameters.top_k is not a generation parameter")
    # SageMaker's inference toolkit answers it with its status, not a 500.
    from sagemaker_inference.errors import BaseInferenceToolkitError

    assert isinstance(error, BaseInferenceToolkitError) and isinstance(error, ValueError)
    assert (error.status_code, str(error)) == (400, "parameters.top_k is not a generation parameter")
