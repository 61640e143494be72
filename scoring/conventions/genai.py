"""OTel GenAI semantic conventions (gen_ai.*) on spans, latest and legacy attribute names.

Why it comes first: GenAI is the vendor-neutral convention and the one provider SDK instrumentations
write; where another convention describes the same span (OpenLLMetry reuses gen_ai.* keys, a LangChain
span may also carry OpenInference keys), GenAI's reading of a field wins.

Why several markers: an agent's root span often carries only its messages, no operation name. The old
per-span content events (gen_ai.content.prompt/completion) are read here too; GenAI log events, a
signal of their own joined to spans by id, are read in genai_logs.py.
"""

from __future__ import annotations

from tracejudge.scoring.conventions.record import Convention, Event, SpanRecord, parse_inputs, parse_outputs, span_tool
from tracejudge.scoring.values import decoded, first, first_int, first_text, parse_documents, parse_messages, scalar
from tracejudge.scoring.view import ToolCall

__all__ = ["CONVENTION", "INPUT_MESSAGES", "OUTPUT_MESSAGES", "SYSTEM_INSTRUCTIONS", "read_usage"]

INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
_PROMPT_EVENT = "gen_ai.content.prompt"
_COMPLETION_EVENT = "gen_ai.content.completion"

# gen_ai.operation.name -> span type (OTel GenAI semconv, "Generative AI spans").
_OPERATIONS = {
    "chat": "CHAT_MODEL",
    "text_completion": "LLM",
    "generate_content": "CHAT_MODEL",
    "embeddings": "EMBEDDING",
    "execute_tool": "TOOL",
    "invoke_agent": "AGENT",
    "create_agent": "AGENT",
    "retrieval": "RETRIEVER",
    "invoke_workflow": "CHAIN",
}
_USAGE_KEYS = frozenset(
    {
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
    }
)


def read(r: SpanRecord, results: dict[str, str]) -> None:
    a = r.attrs
    r.kind = r.kind or _OPERATIONS.get(scalar(a.get("gen_ai.operation.name")), "")
    r.model = r.model or first_text(a, "gen_ai.response.model", "gen_ai.request.model")
    r.provider = r.provider or first_text(a, "gen_ai.provider.name", "gen_ai.system")
    read_usage(r)
    if INPUT_MESSAGES in a and not r.input_messages:
        r.inputs = first(r.inputs, decoded(a[INPUT_MESSAGES]))
        system = parse_messages(decoded(a[SYSTEM_INSTRUCTIONS]), "system", results) if SYSTEM_INSTRUCTIONS in a else []
        r.input_messages = system + parse_inputs(r, results)
    if OUTPUT_MESSAGES in a and not r.output_messages:
        r.outputs = first(r.outputs, decoded(a[OUTPUT_MESSAGES]))
        r.output_messages = parse_outputs(r, results)
    if r.kind == "TOOL" and r.tool is None:
        r.tool = _tool(r)
    if r.kind == "RETRIEVER":
        r.inputs = first(r.inputs, a.get("gen_ai.retrieval.query.text"))
        r.documents = r.documents or parse_documents(a.get("gen_ai.retrieval.documents"))


def read_usage(r: SpanRecord) -> None:
    """gen_ai.usage.* (OpenLLMetry writes the same keys; older releases the prompt/completion names)."""
    a = r.attrs
    if _USAGE_KEYS.isdisjoint(a):  # most spans of a trace are not LLM calls
        return
    r.input_tokens = first(r.input_tokens, first_int(a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"))
    output_tokens = first_int(a, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    r.output_tokens = first(r.output_tokens, output_tokens)


def _tool(r: SpanRecord) -> ToolCall:
    a = r.attrs
    arguments, result = a.get("gen_ai.tool.call.arguments"), a.get("gen_ai.tool.call.result")
    r.inputs, r.outputs = first(r.inputs, decoded(arguments)), first(r.outputs, decoded(result))
    name = scalar(a.get("gen_ai.tool.name")) or r.span.name.removeprefix("execute_tool ")
    return span_tool(r, name, arguments, a.get("gen_ai.tool.call.id"), result)


def read_events(r: SpanRecord, events: list[Event], results: dict[str, str]) -> None:
    """Semconv <= 1.27 put the prompt and completion in span events; the first that holds messages wins."""
    r.genai = True
    for name, ev in events:
        if name == _PROMPT_EVENT and not r.input_messages:
            r.input_messages = parse_messages(decoded(ev.get("gen_ai.prompt")), "user", results)
        elif name == _COMPLETION_EVENT and not r.output_messages:
            r.output_messages = parse_messages(decoded(ev.get("gen_ai.completion")), "assistant", results)


CONVENTION = Convention(
    name="genai",
    read=read,
    markers=("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system", INPUT_MESSAGES, OUTPUT_MESSAGES),
    events=(_PROMPT_EVENT, _COMPLETION_EVENT),
    read_events=read_events,
)
