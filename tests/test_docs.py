"""The docs as a reader gets them.

nbdev's processed notebooks (what Quarto renders) build; each page, rendered to HTML by `tools/build_docs.py`,
opens offline in headless Chromium with every figure visible (its area in a screenshot is not blank); links
between pages work; no page loads anything from the network; math is typeset; and no page carries progress-bar
stubs, TensorFlow/CUDA log lines, warnings meant for the command line, machine paths or unrounded floats.

Screenshots (one full page per chapter, one crop per figure) go to `$SHOPEE_DOCS_SHOTS` when set.
"""
from __future__ import annotations
import base64, io, json, os, re, shutil, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
import build_docs  # noqa: E402

NOTEBOOKS = sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb'))
FIGURE_MIMES = ('image/png', 'image/jpeg', 'image/svg+xml', 'image/gif')
PLOTLY = 'application/vnd.plotly.v1+json'
WIDGET = 'application/vnd.jupyter.widget-view+json'


# ------------------------------------------------------------------------------------------ the build
@pytest.fixture(scope='session')
def site(tmp_path_factory):
    "Process the notebooks (nbdev, a fresh process each) and write the HTML preview, once per session."
    reuse = os.environ.get('SHOPEE_DOCS_REUSE')     # a folder holding _proc/ and _docs/ from tools/build_docs.py
    if reuse:
        d = Path(reuse)
        pages = json.loads((d/'_docs'/'pages.json').read_text())
        return SimpleNamespace(proc=d/'_proc', out=d/'_docs', failed={p['notebook']: p['error'] for p in pages if p['error']},
                               mathjax=next((d/'_docs'/build_docs.MATHJAX_DIR).glob('*.js'), None), mathjax_why='',
                               pages={p['notebook']: p for p in pages})
    d = tmp_path_factory.mktemp('docs')
    cwd = os.getcwd()
    try: failed = build_docs.proc(d/'_proc', n_workers=int(os.environ.get('NB_WORKERS', 2)))
    finally: os.chdir(cwd)
    mj, why = build_docs.mathjax()
    pages = build_docs.preview(d/'_proc', d/'_docs', failed, mj)
    return SimpleNamespace(proc=d/'_proc', out=d/'_docs', failed=failed, mathjax=mj, mathjax_why=why,
                           pages={p['notebook']: p for p in pages})


def test_docs_build(site):
    "Every notebook survives nbdev's docs processing (the cells it re-executes in a fresh kernel all run)."
    msg = '\n\n'.join(f'{nb}:\n{err[-1500:]}' for nb, err in site.failed.items())
    assert not site.failed, f'{len(site.failed)} notebook(s) fail nbdev_proc_nbs:\n\n{msg}'


def test_links_between_pages(site):
    "Every relative link in the preview points at a page (or file) that exists, and every page is reachable."
    bad = []
    for page in site.out.glob('*.html'):
        for url in re.findall(r'href="([^"#:?]+\.html)(?:#[^"]*)?"', page.read_text()):
            if not (site.out/url).exists(): bad.append(f'{page.name} -> {url}')
    assert not bad, 'broken links:\n' + '\n'.join(sorted(set(bad)))
    index = (site.out/'index.html').read_text()
    for p in site.pages.values(): assert f'href="{p["page"]}"' in index, f'{p["page"]} is not linked from index.html'


def test_pages_load_nothing_from_the_network(site):
    "Scripts, styles and images are all local or inline, so the site works offline."
    remote = re.compile(r'<(?:script|img|iframe)[^>]*\ssrc="(https?:)?//[^"]*"|<link[^>]*\shref="(https?:)?//[^"]*"', re.I)
    bad = [f'{p.name}: {m.group(0)[:120]}' for p in site.out.glob('*.html') for m in remote.finditer(p.read_text())]
    assert not bad, 'pages load from the network:\n' + '\n'.join(bad)


def test_quarto_site_is_offline():
    "The Quarto site needs no CDN either: no plotly.js <script>, MathJax from the site itself."
    q = (ROOT/'_quarto.yml').read_text()
    assert 'cdn.plot.ly' not in q, '_quarto.yml still loads plotly.js from a CDN'
    assert f"{build_docs.MATHJAX_DIR}/{build_docs.MATHJAX['name']}" in q, '_quarto.yml does not point MathJax at the local copy'


# ------------------------------------------------------------------------------------------ clean pages
DIRTY = {
    'progress-bar stub': re.compile(r'\d+%\|'),
    'TF/CUDA log line': re.compile(
        r'^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog|cuInit|cudart_stub|cuda_(?:platform|dnn|blas|fft|executor)'
        r'|oneDNN|TF_ENABLE_ONEDNN_OPTS|This TensorFlow binary is optimized|Unable to register cu\w+ factory'
        r'|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ', re.M),
    'warning meant for the command line': re.compile(r'^\s*(?:\S+\.py:\d+: )?[A-Z]\w*Warning: |^WARNING[:|]', re.M),
    'machine path': re.compile(r'(?<![\w.~])(?:/work/|/tmp/|/root/|/home/\w|/var/folders/|/private/var/)|site-packages'),
    'unrounded float': re.compile(r'(?<![\w.])-?\d+\.\d{9,}(?![\d])'),
}


def _output_texts(out: dict):
    "The text a reader sees from one output (not images, not plotly's figure JSON)."
    if out.get('output_type') == 'stream': yield ''.join(out.get('text', ''))
    elif out.get('output_type') == 'error': yield '\n'.join(out.get('traceback', []))
    data = out.get('data', {})
    for mime in ('text/plain', 'text/markdown', 'text/html', 'text/latex'):
        if mime in data and not (mime == 'text/plain' and ({'text/html', 'text/markdown'} & set(data))):
            txt = data[mime]
            yield ''.join(txt) if isinstance(txt, list) else txt


def dirt(nb: dict) -> list[str]:
    "What a reader should not see on the page: one line per finding (cell id, kind, the offending text)."
    found = []
    for i, c in enumerate(nb['cells']):
        where = c.get('id') or f'cell {i}'
        prose = [''.join(c['source'])] if c['cell_type'] == 'markdown' else []   # prose may quote a log line, not a path
        for t in prose:
            for m in DIRTY['machine path'].finditer(t): found.append(f"{where}: machine path in prose: {t[max(0, m.start() - 40):m.end() + 40]!r}")
        texts = []
        for o in c.get('outputs', []):
            if WIDGET in o.get('data', {}):
                found.append(f'{where}: progress widget output (text fallback {"".join(o["data"].get("text/plain", ""))[:60]!r})')
            texts += list(_output_texts(o))
        for t in texts:
            t = re.sub(r'data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+', '', t)
            for kind, rx in DIRTY.items():
                for m in rx.finditer(t):
                    start, end = t.rfind('\n', 0, m.start()) + 1, t.find('\n', m.end())
                    line = t[start:end if end >= 0 else len(t)]
                    found.append(f'{where}: {kind}: {line.strip()[:140]!r}')
    return list(dict.fromkeys(found))


def test_dirt_finder_catches_what_it_should():
    "The check itself can fail: each kind of dirt is found, clean text is not flagged."
    def nb(*outs, md=''): return {'cells': [{'cell_type': 'markdown', 'source': md, 'id': 'm'},
                                            {'cell_type': 'code', 'source': '', 'id': 'c', 'outputs': list(outs)}]}
    stream = lambda t: {'output_type': 'stream', 'name': 'stderr', 'text': t}
    text = lambda t: {'output_type': 'execute_result', 'data': {'text/plain': t}}
    assert dirt(nb(stream('embed lite0:   0%|          | 0/26 [00:00<?, ?row/s]')))[0].startswith('c: progress-bar stub')
    assert 'TF/CUDA' in dirt(nb(stream('E0000 00:00:1795610768.089164   13019 cuda_platform.cc:52] failed call to cuInit')))[0]
    assert 'command line' in dirt(nb(stream('/work/x/data.py:120: UserWarning: 3 of 5 images are absent')))[0]
    assert 'machine path' in dirt(nb(text("PosixPath('/root/.cache/shopee_nb')")))[0]
    assert 'machine path' in dirt(nb(md='written to `/tmp/tmpgiad8jv0/data`'))[0]
    assert 'unrounded' in dirt(nb(text("{'f1': 0.8152345678901234}")))[0]
    assert dirt(nb({'output_type': 'display_data', 'data': {WIDGET: {}, 'text/plain': 'HBox()'}}))[0].startswith('c: progress widget')
    assert dirt(nb(text("{'f1': 0.8152, 'seconds': 12.5, 'ids': 'test_1011840563'}"), md='see `~/.cache/shopee_nb`, 50% of rows')) == []


def _page_nb(site, name) -> dict:
    "The notebook as the page shows it: processed when processing worked, else the source without hidden cells."
    p = site.proc/name
    if p.exists() and name not in site.failed: return json.loads(p.read_text())
    nb = json.loads((ROOT/'nbs'/name).read_text())
    nb['cells'] = [c for c in nb['cells'] if not re.search(r'^\s*#\|\s*hide\b', ''.join(c['source']), re.M)]
    return nb


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_page_is_clean(site, name):
    "No progress stubs, TF/CUDA logs, command-line warnings, machine paths or unrounded floats on the page."
    found = dirt(_page_nb(site, name))
    assert not found, f'{name}: {len(found)} finding(s):\n' + '\n'.join(found[:25])


# ------------------------------------------------------------------------------------------ docs-time cells
_EXEC_DIRECTIVES = re.compile(r'^\s*#\|\s*(export|exports|exporti|exec_doc)\b', re.M)


def rerun_with_state(nb: dict) -> list[str]:
    "Cells nbdev re-executes at docs time (they import) that also compute: run in a fresh smoke-mode shell, they fail or overwrite real outputs."
    import ast
    found = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or _EXEC_DIRECTIVES.search(src) or re.search(r'^\s*#\|\s*eval:\s*false', src, re.M): continue
        if 'nbdev_export' + '()' in src: continue       # nbdev skips the export cell
        code = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
        try: tree = ast.parse(code)
        except SyntaxError: continue
        if not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)): continue
        other = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        if other: found.append(f"cell {c.get('id')}: imports and also runs code (line {other[0].lineno}: "
                               f"{code.splitlines()[other[0].lineno - 1].strip()[:80]!r}); put the imports in a cell of their own")
    return found


def test_rerun_finder_catches_what_it_should():
    cell = lambda src: {'cell_type': 'code', 'source': src, 'id': 'x', 'outputs': []}
    assert rerun_with_state({'cells': [cell('import numpy as np\nx = np.ones(3)')]})
    assert rerun_with_state({'cells': [cell('def f():\n    import os\nf()')]})
    assert not rerun_with_state({'cells': [cell('import numpy as np\nfrom pathlib import Path'), cell('x = 1'),
                                           cell('#| export\nimport os\nX = os.sep'), cell('def f():\n    import os')]})


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_docs_time_cells_only_import(name):
    "nbdev re-runs every cell that imports, in a fresh shell under IN_TEST: such a cell must not also compute."
    found = rerun_with_state(json.loads((ROOT/'nbs'/name).read_text()))
    assert not found, f'{name}:\n' + '\n'.join(found)


# ------------------------------------------------------------------------------------------ the browser
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')


def _find_browser():
    for env in ('CHROME_PATH', 'BROWSER_PATH'):
        if os.environ.get(env) and Path(os.environ[env]).exists(): return os.environ[env]
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _install_chromium() -> str:
    "Try Debian's chromium (as root with apt-get); return what happened."
    if not shutil.which('apt-get'): return 'no apt-get on this machine'
    if os.geteuid() != 0: return 'not root, so apt-get install chromium is not possible'
    log = ''
    for cmd in (['apt-get', 'install', '-y', '-q', 'chromium'], ['apt-get', 'update', '-q'], ['apt-get', 'install', '-y', '-q', 'chromium']):
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'})
        log = (r.stdout + r.stderr)[-400:]
        if cmd[1] == 'install' and r.returncode == 0: return 'installed'
    return f'apt-get install chromium failed: {log}'


class Chrome:
    "Headless Chromium driven over the DevTools protocol (websocket-client; no browser download)."
    FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync', '--hide-scrollbars',
             '--host-resolver-rules=MAP * ~NOTFOUND', '--remote-debugging-port=0', '--window-size=1280,1000']

    def __init__(self, exe: str):
        import websocket
        self.tmp = tempfile.mkdtemp(prefix='docs-chrome-')
        self.proc = subprocess.Popen([exe, *self.FLAGS, f'--user-data-dir={self.tmp}', 'about:blank'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = Path(self.tmp)/'DevToolsActivePort', time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() - t0 > 60:
                raise RuntimeError(f'{exe} did not start (exit {self.proc.poll()})')
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=30))
        page = next(t for t in targets if t['type'] == 'page')
        self.ws = websocket.create_connection(page['webSocketDebuggerUrl'], timeout=120, suppress_origin=True)
        self.n = 0
        self.call('Page.enable')

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({'id': self.n, 'method': method, 'params': params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.n:
                if 'error' in msg: raise RuntimeError(f'{method}: {msg["error"]}')
                return msg['result']

    def js(self, expr, await_promise=False):
        r = self.call('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=await_promise)
        if 'exceptionDetails' in r: raise RuntimeError(f'{expr[:60]}: {r["exceptionDetails"]}')
        return r['result'].get('value')

    def open(self, url: str):
        self.call('Page.navigate', url=url)
        t0 = time.time()
        while self.js('document.readyState') != 'complete':
            if time.time() - t0 > 120: raise TimeoutError(url)
            time.sleep(0.1)
        self.js('Promise.all([...document.images].map(i => i.decode().catch(() => null)))'
                '.then(() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null).then(() => true)', True)

    def shot(self, x, y, w, h) -> bytes:
        r = self.call('Page.captureScreenshot', format='png', captureBeyondViewport=True,
                      clip=dict(x=x, y=y, width=w, height=h, scale=1))
        return base64.b64decode(r['data'])

    def close(self):
        with_suppress(self.ws.close)
        self.proc.terminate()
        with_suppress(lambda: self.proc.wait(10))
        shutil.rmtree(self.tmp, ignore_errors=True)


def with_suppress(f):
    try: f()
    except Exception: pass


@pytest.fixture(scope='session')
def browser():
    exe = _find_browser()
    if exe is None:
        why = _install_chromium()
        exe = _find_browser()
        if exe is None: pytest.skip(f'no Chromium/Chrome to render the pages ({why}); install Debian\'s chromium')
    c = Chrome(exe)
    yield c
    c.close()


@pytest.fixture(scope='session')
def shots(tmp_path_factory):
    d = Path(os.environ.get('SHOPEE_DOCS_SHOTS') or tmp_path_factory.mktemp('shots'))
    d.mkdir(parents=True, exist_ok=True)
    return d


FIGURES_JS = '''[...document.querySelectorAll('.jp-OutputArea-output img, .jp-RenderedSVG > svg')]
  .filter(e => !e.closest('mjx-container'))
  .map(e => { const r = e.getBoundingClientRect();
              return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height, tag: e.tagName,
                      ok: e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0)}; })'''


def blank(png: bytes) -> tuple[bool, str]:
    "Is this crop blank? (almost no pixels differ from its most common colour)"
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(png)).convert('L'), dtype=np.int16)
    vals, counts = np.unique(a, return_counts=True)
    bg = vals[counts.argmax()]
    ink = float((np.abs(a - bg) > 24).mean())
    return ink < 0.005 or a.std() < 3, f'std {a.std():.1f}, {100*ink:.1f}% ink'


def _expected_figures(nb) -> tuple[int, list[str]]:
    "Figures the page should show, and the outputs that have no static image (plotly JSON only)."
    n, missing = 0, []
    for c in nb['cells']:
        for o in c.get('outputs', []):
            d = o.get('data', {})
            if any(m in d for m in FIGURE_MIMES): n += 1
            elif PLOTLY in d:
                title = ((d[PLOTLY].get('layout') or {}).get('title') or {})
                missing.append(f"cell {c.get('id')}: plotly figure {title.get('text', '') if isinstance(title, dict) else title!r} "
                               'has no static image (re-execute the notebook: shopee_nb.core gives figures one)')
    return n, missing


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_figures_render(site, browser, shots, name):
    "Open the page in headless Chromium: every figure is there, and its area in the screenshot is not blank."
    page = site.pages[name]
    browser.open((site.out/page['page']).as_uri())
    boxes = browser.js(FIGURES_JS)
    height = min(int(browser.js('document.documentElement.scrollHeight')), 16000)
    (shots/f"{Path(page['page']).stem}.png").write_bytes(browser.shot(0, 0, 1280, height))
    problems = []
    n, missing = _expected_figures(_page_nb(site, name))
    problems += missing
    if len(boxes) != n: problems.append(f'{n} figure outputs in the notebook, {len(boxes)} drawn on the page')
    for i, b in enumerate(boxes, 1):
        if not b['ok'] or b['w'] < 20 or b['h'] < 20:
            problems.append(f'figure {i}: not drawn ({b})')
            continue
        png = browser.shot(b['x'], b['y'], b['w'], b['h'])
        (shots/f"{Path(page['page']).stem}-fig{i}.png").write_bytes(png)
        is_blank, stats = blank(png)
        if is_blank: problems.append(f'figure {i}: blank in the screenshot ({stats})')
    assert not problems, f"{name} ({page['page']}):\n" + '\n'.join(problems)


def test_math_is_typeset(site, browser):
    "Pages with TeX ($...$) show typeset math, from the local MathJax copy."
    if site.mathjax is None: pytest.skip(f'MathJax unavailable: {site.mathjax_why}')
    bad = []
    for p in site.pages.values():
        nb = _page_nb(site, p['notebook'])
        md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
        if not re.search(r'\$[^$\n]+\$', md): continue
        browser.open((site.out/p['page']).as_uri())
        if not browser.js("document.querySelectorAll('mjx-container').length"): bad.append(p['page'])
    assert not bad, f'math not typeset on: {bad}'


# ------------------------------------------------------------------------------------------ quiet TensorFlow
def test_import_tf_is_quiet():
    "core.import_tf loads TensorFlow without C++ log lines (absl, CUDA, oneDNN) reaching stderr."
    pytest.importorskip('tensorflow')
    code = ('from shopee_nb.core import import_tf\ntf = import_tf()\n'
            'x = tf.constant([[1, 2]], dtype=tf.int64)\nprint(int(tf.reduce_sum(x * x)))')
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == '5'
    noise = [line for line in r.stderr.splitlines() if DIRTY['TF/CUDA log line'].search(line)]
    assert not noise, 'TensorFlow logged:\n' + '\n'.join(noise)
