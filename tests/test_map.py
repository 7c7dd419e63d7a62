"""The map at the top of tracecraft.py is true: its sections are the file's sections, in order,
and no top-level definition uses a name that a later section defines (each section may call
only the sections above it)."""
import ast
import re

from conftest import REPO

SOURCE = (REPO / "tracecraft.py").read_text(encoding="utf-8")
LINES = SOURCE.splitlines()


def section_headers():
    """[(line, number, title)] of the '# N. Title.' headers that follow a line of '# ===='."""
    found = []
    for i, line in enumerate(LINES):
        match = re.match(r"# (\d+[a-z]?)\. (.+?)\.  ", line)
        if match and i and LINES[i - 1].startswith("# ===="):
            found.append((i + 1, match.group(1), match.group(2)))
    return found


def test_the_docstring_map_names_the_sections_in_their_order():
    docstring = ast.get_docstring(ast.parse(SOURCE))
    mapped = re.findall(r"^\s+(\d+[a-z]?)\. (\S.*?)\s{2,}", docstring, re.M)
    assert mapped, "no map in the module docstring"
    assert [(number, title) for _, number, title in section_headers()] == mapped


def test_no_definition_uses_a_later_section():
    headers = section_headers()

    def section(line):   # 6a, 6b ... are parts of section 6
        return max([int(re.match(r"\d+", n).group()) for start, n, _ in headers if start <= line]
                   or [0])
    tree = ast.parse(SOURCE)
    defined = {}
    for node in tree.body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t.id for target in getattr(node, "targets", [])
             for t in (target.elts if isinstance(target, ast.Tuple) else [target])
             if isinstance(t, ast.Name)]
        for name in names:
            defined.setdefault(name, section(node.lineno))
    wrong = sorted({f"{getattr(node, 'name', '?')} (section {section(node.lineno)}) uses "
                    f"{used.id} (section {defined[used.id]})"
                    for node in tree.body
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))
                    for used in ast.walk(node)
                    if isinstance(used, ast.Name) and defined.get(used.id, 0) > section(node.lineno)})
    assert not wrong, "\n".join(wrong)


def test_each_section_says_what_it_owns_and_what_it_calls():
    for line, number, title in section_headers():
        header = " ".join(LINES[line - 1:line + 4])
        assert "Owns:" in header and "Calls:" in header, f"section {number} ({title})"


def test_every_name_a_function_reads_is_defined():
    """The class of a NameError that only a rare path reaches (a download healing stale
    metadata once read `blob`, defined nowhere in its function)."""
    import builtins
    import symtable
    top = symtable.symtable(SOURCE, "tracecraft.py", "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    defined |= set(dir(builtins)) | {"__file__", "__name__", "__doc__"}
    undefined = []

    def visit(table):
        for child in table.get_children():
            if child.get_type() == "function":
                undefined.extend(f"{child.get_name()} (line {child.get_lineno()}) reads "
                                 f"{s.get_name()}" for s in child.get_symbols()
                                 if s.is_global() and s.is_referenced()
                                 and s.get_name() not in defined)
            visit(child)
    visit(top)
    assert not undefined, "\n".join(undefined)


PEERS = {"records": "6a", "memory": "6b", "inbox": "6c", "steps": "6d", "plans": "6e",
         "reservations": "6f", "agents": "6g", "artifacts": "6h", "sessions": "6i"}


def test_each_peer_calls_only_the_peers_its_header_names():
    """Within section 6 the peers reach each other through the client (self.client.steps...):
    a subsection may use a later one only where its header says so."""
    headers = [(line, number, title) for line, number, title in section_headers()
               if number[0] == "6"]
    wrong = []
    for (start, number, title), (end, *_) in zip(headers, headers[1:] + [(len(LINES), None, "")]):
        if len(number) == 1 or title == "The client":   # the façade over them all
            continue
        lines = LINES[start - 1:start + 40]
        lines = lines[:next(i for i, line in enumerate(lines) if line.startswith("# ===="))]
        header = " ".join(lines).split("Calls:")[1]
        allowed = set(re.findall(r"6[a-k]", header))
        for first, last in re.findall(r"(6[a-k])-(6[a-k])", header):
            allowed |= {"6" + chr(c) for c in range(ord(first[1]), ord(last[1]) + 1)}
        body = "\n".join(LINES[start:end - 1])
        for peer in set(re.findall(r"\bclient\.(\w+)", body)) & set(PEERS):
            if PEERS[peer] != number and PEERS[peer] not in allowed:
                wrong.append(f"{number} calls {PEERS[peer]} ({peer}) but its header says "
                             f"{header.strip()!r}")
    assert not wrong, "\n".join(wrong)
