"""Conversation templates in the LLaVA code base's shape (this fixture's own wording)."""

import copy
from dataclasses import dataclass, field


@dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    sep: str = " "
    sep2: str = "</s>"
    messages: list[list] = field(default_factory=list)

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        seps = (self.sep, self.sep2)
        text = self.system + seps[0]
        for i, (role, message) in enumerate(self.messages):
            text += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return text

    def copy(self) -> "Conversation":
        return copy.deepcopy(self)


conv_templates = {
    "llava_v1": Conversation(
        system="A test conversation between a person and a tiny assistant.",
        roles=("USER", "ASSISTANT"),
    )
}
