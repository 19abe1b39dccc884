"""Regenerate the model docs' parameter/FLOP tables from the registry (re-run after adding a model).

    python docs/gen_model_docs.py

* docs/models/cnn.md is assembled from docs/models/cnn/*.md (one section per family, in FAMILY_ORDER), each
  followed by the `paperzoo models --family F --format md` table of that family.
* Any doc containing a block
      <!-- paperzoo-models family=vit,swin -->
      ...
      <!-- /paperzoo-models -->
  gets the block's body replaced by the current table of those families.
"""

from __future__ import annotations

import re
from pathlib import Path

from paperzoo.registry import get_entry, list_models
from paperzoo.tools.summary import summarize
from paperzoo.tools.tables import render

DOCS = Path(__file__).parent
FAMILY_ORDER = ["resnet", "densenet", "mobilenet", "shufflenet", "efficientnet", "xception", "inception"]
BLOCK = re.compile(r"(<!-- paperzoo-models family=([\w,]+) -->\n)(.*?)(<!-- /paperzoo-models -->)", re.S)
COLUMNS = ["name", "params", "ref_params", "input", "gflops"]


def family_table(families: list[str]) -> str:
    rows = []
    for fam in families:
        for name in list_models(family=fam):
            s = summarize(name)
            row = s.as_dict()
            row["input"] = f"{s.input_size[0]}x{s.input_size[1]}"
            rows.append(row)
    if not rows:
        return "_(no registered models)_"
    note = ("\nGFLOPs: multiply-adds x 2 at the default input size, counted with `torch.utils.flop_counter` "
            "(attention added by formula). `ref_params`: the count of the reference implementation (timm / "
            "torchvision), checked by `paperzoo models --check` and the test suite.\n")
    return render(rows, COLUMNS, "md") + "\n" + note


def families_of_section(text: str) -> list[str]:
    m = re.search(r"<!-- families: ([\w,]+) -->", text)
    return m.group(1).split(",") if m else []


def build_cnn() -> None:
    parts = [(DOCS / "models" / "cnn_intro.md").read_text().rstrip() + "\n"]
    sections = sorted((DOCS / "models" / "cnn").glob("*.md"),
                      key=lambda p: FAMILY_ORDER.index(p.stem) if p.stem in FAMILY_ORDER else 99)
    for sec in sections:
        text = sec.read_text().rstrip()
        fams = families_of_section(text) or [sec.stem]
        fams = [f for f in fams if list_models(family=f)]
        parts.append(text + "\n\n" + (("### Parameters and FLOPs\n\n" + family_table(fams)) if fams else ""))
    (DOCS / "models" / "cnn.md").write_text("\n\n".join(parts).rstrip() + "\n")


def refresh_blocks() -> None:
    for doc in DOCS.rglob("*.md"):
        text = doc.read_text()
        if "<!-- paperzoo-models" not in text:
            continue
        new = BLOCK.sub(lambda m: m.group(1) + family_table(m.group(2).split(",")) + "\n" + m.group(4), text)
        if new != text:
            doc.write_text(new)
            print(f"updated {doc}")


if __name__ == "__main__":
    get_entry("resnet18")  # loads the registry
    build_cnn()
    refresh_blocks()
    print("wrote docs/models/cnn.md")
