#!/usr/bin/env python
"""Build the docs: nbdev's processed notebooks (what Quarto renders), then the Quarto site where Quarto is
installed, or an offline HTML preview of the same processed notebooks where it is not.

    python tools/build_docs.py [--out _docs] [--proc _proc] [--workers 2] [--preview]

Run it with the project's Python (`make docs` does): it installs nothing. (`nbdev_proc_nbs` and `nbdev_docs`
without Quarto try to install Quarto and then `pip install -e` into whatever pip is first on PATH.)
The processing is nbdev's own (`nbdev.serve._proc_file` + `nbdev.serve_drv.main`, the functions
`nbdev_proc_nbs` runs), one fresh process per notebook, so every failing notebook is reported, not only the
first. Exit status 1 when a notebook fails to process (its preview page is then drawn from the unprocessed
notebook, with a banner saying so).
"""
from __future__ import annotations
import argparse, hashlib, html, json, os, re, shutil, subprocess, sys, tarfile, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
TEMPLATE = Path(__file__).resolve().parent/'docs_template'
# MathJax 3 in one file with every TeX extension (no further downloads at page time), from the npm registry.
MATHJAX = dict(package='mathjax@3.2.2', member='package/es5/tex-svg-full.js', name='tex-svg-full.js',
               sha256='a4354ff94fd868aea0cc6eaaa79a57fda0588646fc46ee3700a349ee0a11cbe6')
MATHJAX_DIR = 'mathjax'          # relative to the site root and to nbs/ (Quarto's `resources`)


def _cfg():
    from nbdev.config import get_config
    return get_config(path=ROOT)


# ---------------------------------------------------------------------------------------------- processing
def _error_text(e: BaseException) -> str:
    "nbdev's message (notebook, cell, source) and the root cause's line from the worker's traceback."
    tb = str(getattr(e.__cause__, 'tb', '') or '')
    causes = re.findall(r'^(\w+(?:Error|Exception|Exit|Interrupt)\b.*)$', tb, re.M)
    return f'{e}\n--> {causes[0] if causes else type(e).__name__}'.strip()


def proc(dest: Path, n_workers: int = 2) -> dict[str, str]:
    "Process nbs/ into `dest` (from scratch) with nbdev's processors; return {notebook: error} for failures."
    from nbdev.serve import _proc_file
    from nbdev.doclinks import nbglob
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    cwd = os.getcwd()
    os.chdir(ROOT)
    refresh_quarto_yml()                      # nbs/nbdev.yml (git-ignored)
    nbdev_sidebar.__wrapped__(path=NBS)       # nbs/sidebar.yml (git-ignored)
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    files = nbglob(NBS, func=Path, file_glob='', file_re='')
    files += [NBS/f for f in ('_quarto.yml', '_brand.yml') if (NBS/f).exists()]
    jobs = [j for j in (_proc_file(f, dest, NBS) for f in files) if j]
    env_before = os.environ.get('PYTHONPATH')
    os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + ([env_before] if env_before else []))
    try:
        import nbdev.serve_drv
        with ProcessPoolExecutor(max(1, n_workers), mp_context=get_context('spawn')) as ex:
            futures = {j[0].name: ex.submit(nbdev.serve_drv.main, j) for j in jobs}
            errors = {name: f.exception() for name, f in futures.items()}
    finally:
        if env_before is None: os.environ.pop('PYTHONPATH', None)
        else: os.environ['PYTHONPATH'] = env_before
    os.chdir(cwd)
    return {k: _error_text(v) for k, v in sorted(errors.items()) if v is not None}


# ---------------------------------------------------------------------------------------------- MathJax
def mathjax(cache: Path | None = None) -> tuple[Path | None, str]:
    "Path to MathJax's single-file build (fetched once with `npm pack`, sha256-checked), or (None, why not)."
    cache = Path(cache or os.environ.get('SHOPEE_DOCS_CACHE') or ROOT/'.cache'/'docs')
    out = cache/MATHJAX['package'].replace('@', '-')/MATHJAX['name']
    if out.exists() and hashlib.sha256(out.read_bytes()).hexdigest() == MATHJAX['sha256']: return out, 'cached'
    npm = shutil.which('npm')
    if npm is None: return None, 'npm is not installed, so MathJax could not be fetched: math shows as TeX source'
    with tempfile.TemporaryDirectory() as td:
        r = subprocess.run([npm, 'pack', MATHJAX['package'], '--pack-destination', td, '--silent'],
                           capture_output=True, text=True, timeout=300)
        tgz = list(Path(td).glob('*.tgz'))
        if r.returncode or not tgz:
            return None, f'npm pack {MATHJAX["package"]} failed ({r.stderr.strip()[-300:]}): math shows as TeX source'
        with tarfile.open(tgz[0]) as t: data = t.extractfile(MATHJAX['member']).read()
    got = hashlib.sha256(data).hexdigest()
    if got != MATHJAX['sha256']: return None, f'{MATHJAX["package"]} {MATHJAX["member"]} has sha256 {got}, expected {MATHJAX["sha256"]}'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out, 'fetched'


# ---------------------------------------------------------------------------------------------- preview
def frontmatter(nb: dict) -> dict:
    "The YAML front matter nbdev puts in a processed notebook's first cell (title, description, output-file)."
    import yaml
    if not nb['cells'] or nb['cells'][0]['cell_type'] not in ('markdown', 'raw'): return {}
    src = ''.join(nb['cells'][0]['source'])
    m = re.match(r'\s*---\n(.*?)\n---', src, re.S)
    return (yaml.safe_load(m.group(1)) or {}) if m else {}


def _title_cell(fm: dict, fallback: str) -> str:
    out = f"# {fm.get('title') or fallback}\n"
    if fm.get('description'): out += f"\n> {fm['description']}\n"
    return out


_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def _quarto_cell_options(cell: dict) -> dict | None:
    "Apply the Quarto cell options nbdev leaves for Quarto (echo/output/include); None drops the cell."
    if cell['cell_type'] != 'code': return cell
    lines = ''.join(cell['source']).splitlines()
    opts, body = {}, []
    for i, l in enumerate(lines):
        m = _DIRECTIVE.match(l)
        if m and not body: opts[m.group(1).lower()] = m.group(2).lower()
        else: body.append(l)
    if opts.get('include') == 'false': return None
    cell['source'] = '\n'.join(body).strip('\n')
    if opts.get('output') == 'false': cell['outputs'] = []
    if opts.get('echo') == 'false': cell.setdefault('metadata', {}).setdefault('tags', []).append('remove_input')
    return cell


def page_name(nb_path: Path, nb: dict | None = None) -> str:
    "The HTML file a notebook becomes (nbdev's `output-file`: `00_core.ipynb` -> `core.html`)."
    fm = frontmatter(nb) if nb else {}
    if fm.get('output-file'): return fm['output-file']
    from nbdev.doclinks import _nbpath2html
    return _nbpath2html(Path(nb_path)).name


def _rewrite_links(text: str, names: dict[str, str], site: str) -> str:
    "Point links at notebooks (`01_data.ipynb`) and at the published site (`{site}/core.html`) to the preview pages."
    def fix(m):
        url = m.group(2)
        if site and url.startswith(site): url = url[len(site):].lstrip('/')
        base, _, frag = url.partition('#')
        if base in names: url = names[base] + ('#' + frag if frag else '')
        return f'{m.group(1)}="{url}"'
    return re.sub(r'(href)="([^"]+)"', fix, text)


def _nav(pages: list[tuple[str, str]], current: str) -> str:
    items = ''.join(f'<li{" class=current" if href == current else ""}><a href="{href}">{html.escape(title)}</a></li>'
                    for href, title in pages)
    return f'<div class="docs-site-title"><a href="index.html">shopee_nb</a></div><ul>{items}</ul>'


def _order(p: Path):
    return (p.stem != 'index', p.name)


def preview(proc_dir: Path, out: Path, failed: dict[str, str] | None = None, mathjax_js: Path | None = None) -> list[dict]:
    "Render every notebook to `out/<page>.html` with nbconvert (processed one, else the source with a banner)."
    import nbformat
    from nbconvert import HTMLExporter
    failed = failed or {}
    cfg = _cfg()
    site = f"{cfg.doc_host.rstrip('/')}{cfg.doc_baseurl}".rstrip('/')
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    srcs = sorted(NBS.glob('*.ipynb'), key=_order)
    pages = []
    for src in srcs:
        processed = Path(proc_dir)/src.name
        use = processed if processed.exists() and src.name not in failed else src
        nb = nbformat.reads(use.read_text(), as_version=4)
        pages.append(dict(notebook=src.name, source=use, processed=use == processed, error=failed.get(src.name),
                          page=page_name(src, nb), title=frontmatter(nb).get('title') or _first_heading(nb) or src.stem, nb=nb))
    names = {p['notebook']: p['page'] for p in pages} | {p['page']: p['page'] for p in pages}
    nav = [(p['page'], p['title']) for p in pages]
    if mathjax_js is not None:
        (out/MATHJAX_DIR).mkdir()
        shutil.copy2(mathjax_js, out/MATHJAX_DIR/MATHJAX['name'])
    exp = HTMLExporter(template_name='docs_template', extra_template_basedirs=[str(TEMPLATE.parent)],
                       exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True,
                       mathjax_url=f"{MATHJAX_DIR}/{MATHJAX['name']}" if mathjax_js else '')
    from nbconvert.preprocessors import TagRemovePreprocessor
    exp.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove_input'}), enabled=True)
    for p in pages:
        nb = p['nb']
        if p['processed'] and frontmatter(nb):
            nb['cells'][0] = nbformat.v4.new_markdown_cell(_title_cell(frontmatter(nb), p['title']))
        if not p['processed']:
            nb['cells'] = [c for c in nb['cells'] if not re.search(r'^\s*#\|\s*(hide|default_exp)\b', ''.join(c['source']), re.M)]
            banner = ('**This page was not processed**: nbdev could not run the cells it re-executes at docs time, so this '
                      'is the notebook as committed.\n\n```\n' + _short_error(p['error'] or 'not processed') + '\n```')
            nb['cells'].insert(1 if nb['cells'] and nb['cells'][0]['cell_type'] == 'markdown' else 0,
                               nbformat.v4.new_markdown_cell(banner))
        nb['cells'] = [c for c in (_quarto_cell_options(c) for c in nb['cells']) if c is not None]
        nb.get('metadata', {}).pop('widgets', None)
        for c in nb['cells']:            # a finished NotebookBar leaves an output with no data: nothing to draw
            if c['cell_type'] == 'code': c['outputs'] = [o for o in c['outputs'] if o.get('data', True)]
        body, _ = exp.from_notebook_node(nb, resources={'nav_html': _nav(nav, p['page']), 'metadata': {'name': p['title']}})
        (out/p['page']).write_text(_rewrite_links(body, names, site))
        p.pop('nb')
    (out/'pages.json').write_text(json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in p.items()} for p in pages], indent=1))
    return pages


def _short_error(err: str, n: int = 12) -> str:
    "The error's first line, the cell's first `n` lines and the root cause (the `-->` line)."
    lines = err.strip().splitlines()
    cause = [l for l in lines if l.startswith('--> ')]
    body = [l for l in lines[1:] if not l.startswith('--> ')]
    return '\n'.join(lines[:1] + body[:n] + (['    ...'] if len(body) > n else []) + cause)


def _first_heading(nb):
    for c in nb['cells']:
        if c['cell_type'] == 'markdown':
            m = re.search(r'^#\s+(.+)$', ''.join(c['source']), re.M)
            if m: return m.group(1).strip()
    return None


# ---------------------------------------------------------------------------------------------- Quarto
def quarto_site(proc_dir: Path, out: Path, mathjax_js: Path | None) -> None:
    "Render the processed notebooks with Quarto (what `nbdev_docs` does after `nbdev_proc_nbs`)."
    if mathjax_js is not None:
        (Path(proc_dir)/MATHJAX_DIR).mkdir(exist_ok=True)
        shutil.copy2(mathjax_js, Path(proc_dir)/MATHJAX_DIR/MATHJAX['name'])
    subprocess.run(['quarto', 'render', '--no-cache'], cwd=proc_dir, check=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(str(Path(proc_dir)/_cfg().doc_path.name), str(out))


def build(out: Path = ROOT/'_docs', proc_dir: Path = ROOT/'_proc', n_workers: int = 2, force_preview: bool = False) -> dict:
    t0 = time.time()
    failed = proc(proc_dir, n_workers)
    print(f'processed the notebooks in {time.time() - t0:.0f} s ({len(failed)} failed)')
    mj, why = mathjax()
    if mj is None: print(f'MathJax: {why}', file=sys.stderr)
    if shutil.which('quarto') and not force_preview and not failed:
        quarto_site(proc_dir, out, mj)
        kind = 'Quarto site'
    else:
        if not shutil.which('quarto'): print('Quarto is not installed: writing an HTML preview of the processed notebooks (nbconvert).')
        preview(proc_dir, out, failed, mj)
        kind = 'HTML preview'
    print(f'{kind} in {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({time.time() - t0:.0f} s); open index.html')
    for nb, err in failed.items(): print(f'\nFAILED to process {nb}:\n{err}', file=sys.stderr)
    return failed


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', type=Path, default=ROOT/'_docs')
    ap.add_argument('--proc', type=Path, default=ROOT/'_proc')
    ap.add_argument('--workers', type=int, default=int(os.environ.get('NB_WORKERS', 2)))
    ap.add_argument('--preview', action='store_true', help='write the nbconvert preview even where Quarto is installed')
    a = ap.parse_args()
    sys.exit(1 if build(a.out.resolve(), a.proc.resolve(), a.workers, a.preview) else 0)
