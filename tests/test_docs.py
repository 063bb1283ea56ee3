"""The documentation holds together: the README stays a short user's page, every relative link in the README, the
docs/ pages and the results index points at a file (and heading) that exists, and every result file is indexed."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DOCS = ROOT / 'docs'
RESULTS = ROOT / 'benchmarks' / 'results'
RESULTS_INDEX = RESULTS / 'README.md'
PAGES = ('freezing', 'transfer', 'performance', 'datasets', 'training', 'deployment', 'architecture', 'development')

LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^\s*```')
DATE = re.compile(r'\b20\d\d-\d\d-\d\d\b')


def prose(text):
    """The lines of a Markdown text outside fenced code blocks."""
    lines, in_code = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            lines.append(line)
    return lines


def links(md):
    """Relative link targets of a Markdown file as (target path, anchor or '')."""
    out = []
    for line in prose(md.read_text(encoding='utf-8')):
        for target in LINK.findall(line):
            if re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition('#')
            out.append((md.parent / path if path else md, anchor))
    return out


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped (not '-' or '_'), spaces to '-'."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def anchors(md):
    seen, out = {}, set()
    for line in prose(md.read_text(encoding='utf-8')):
        m = re.match(r'#{1,6}\s+(.*)', line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f'{s}-{n}')
    return out


def documents():
    return [README, RESULTS_INDEX, *sorted(DOCS.glob('*.md'))]


def test_slug_follows_github():
    assert slug('Side by side with upstream YOLOv5 v7.0') == 'side-by-side-with-upstream-yolov5-v70'
    assert slug("Matching classes: `class_map`") == 'matching-classes-class_map'
    assert slug("Where a run's time goes") == 'where-a-runs-time-goes'


def test_readme_is_short_and_has_no_development_paths_or_dates():
    text = README.read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 300
    assert '../shared' not in text
    assert not DATE.search(text), DATE.search(text).group(0)


@pytest.mark.parametrize('md', sorted(DOCS.glob('*.md')), ids=lambda p: p.name)
def test_docs_name_no_development_paths_outside_the_development_page(md):
    assert md.name == 'development.md' or '../shared' not in md.read_text(encoding='utf-8')


@pytest.mark.parametrize('md', documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    broken = []
    for target, anchor in links(md):
        if not target.exists():
            broken.append(f'{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: no such file')
        elif anchor and target.suffix == '.md' and anchor not in anchors(target):
            broken.append(f'{target.relative_to(ROOT)}#{anchor}: no such heading')
    assert not broken, f'{md.relative_to(ROOT)}: ' + '; '.join(broken)


def test_every_docs_page_exists_and_the_readme_links_it():
    linked = {target.resolve() for target, _ in links(README)}
    for page in PAGES:
        assert (DOCS / f'{page}.md').is_file(), page
    orphans = [p.name for p in DOCS.glob('*.md') if p.resolve() not in linked]
    assert not orphans, f'docs pages the README does not link: {orphans}'


def test_results_index_links_every_result_file():
    indexed = {target.resolve() for target, _ in links(RESULTS_INDEX)}
    files = [p for p in RESULTS.rglob('*') if p.is_file() and p not in (RESULTS_INDEX, RESULTS / 'NOTES.md')]
    missing = sorted(str(p.relative_to(RESULTS)) for p in files if p.resolve() not in indexed)
    assert not missing, f'benchmarks/results/README.md does not index: {missing}'
