"""A tree as ASCII text: one line per node with its step text, p_hat and leaf reward (for READMEs and debugging)."""

from __future__ import annotations

from ibtpo.core.tree import Node, Tree


def render_tree(tree: Tree, tokenizer, width: int = 40) -> str:
    """Draw `tree` top-down; each node shows its text (escaped, cut at `width`), p_hat and, for leaves, R."""
    tree.statistics()  # p_hat

    def label(node: Node) -> str:
        text = tokenizer.decode(node.token_ids, skip_special_tokens=False).replace("\n", "\\n")
        text = text if len(text) <= width else text[: width - 1] + "~"
        leaf = f"  R={node.reward:g}" if not node.children and node.reward is not None else ""
        return f'"{text}"  p={node.p_hat:.2f}{leaf}'

    prompt = tokenizer.decode(tree.prompt_ids, skip_special_tokens=False).replace("\n", "\\n")
    lines = [f'[prompt] "{prompt}"  p={tree.root.p_hat:.2f}  ({tree.root.n_leaves} trajectories, '
             f"{tree.new_tokens} new tokens)"]

    def walk(node: Node, indent: str) -> None:
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            lines.append(f"{indent}{'└─ ' if last else '├─ '}{label(child)}")
            walk(child, indent + ("   " if last else "│  "))

    walk(tree.root, "")
    return "\n".join(lines)
