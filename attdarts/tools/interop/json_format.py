"""The `genotype.json` the Att-DARTS authors' search writes: the fields of their Genotype, lists
instead of tuples. JSON is a Python expression, so `ast` gives every value its location."""

from __future__ import annotations

import ast
import json

from attdarts.language.errors import Span
from attdarts.language.ir import Genotype
from attdarts.tools.interop.reader import Reader, _describe, default_name


class JsonReader(Reader):
    def read(self, name: str | None) -> list[Genotype]:
        self.json_mode = True
        try:
            json.loads(self.text)
        except json.JSONDecodeError as error:
            message = error.msg[:1].lower() + error.msg[1:]
            self.fail(f"invalid JSON: {message}", span=Span(error.lineno, error.colno))
            return []
        except RecursionError:
            self.fail("invalid JSON: the file nests too deeply")
            return []
        tree = self.parse(mode="eval")  # JSON is a Python expression: ast gives the locations
        if tree is None:
            return []
        body = tree.body
        if not isinstance(body, ast.Dict):
            self.fail(f"expected a JSON object with the genotype's fields, found {_describe(body)}", body,
                      "genotype.json holds {\"normal\": [...], \"normal_concat\": [...], "
                      "\"reduce\": [...], \"reduce_concat\": [...], ...}")
            return []
        fields: dict[str, ast.AST] = {}
        for key, value in zip(body.keys, body.values):
            self.add_field(fields, key.value if isinstance(key, ast.Constant) else "", value, key)
        genotype = self.genotype(name or default_name(self.path), fields, body,
                                 f"imported from {self.label}")
        return [genotype] if genotype is not None else []

