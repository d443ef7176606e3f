"""The page ``graft serve`` shows at ``/``: self-contained (no external URLs), vanilla JS.

``?demo=1`` draws a small demo image on a canvas and predicts it on load (used to screenshot
the page in a headless browser). ``__TOP_K__`` is replaced by the server's top-k.
"""
from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>graftwork classifier</title>
<style>
 body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
 main{max-width:720px;margin:24px auto;padding:0 16px}
 h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin:0 0 16px}
 #drop{border:2px dashed #99a;border-radius:10px;background:#fff;padding:28px;text-align:center;
  cursor:pointer} #drop.over{border-color:#2a6;background:#eefaf2}
 #out{display:flex;gap:20px;margin-top:20px;align-items:flex-start}
 #preview{width:160px;height:160px;object-fit:contain;background:#fff;border-radius:8px;
  border:1px solid #ddd} #preview:not([src]){visibility:hidden}
 #bars{flex:1} .row{margin:0 0 10px} .lab{display:flex;justify-content:space-between}
 .bar{height:14px;background:#e3e6ea;border-radius:7px;overflow:hidden}
 .fill{height:100%;background:#3b82c4} .row:first-child .fill{background:#2a9d5c}
 .err{color:#b00020} .muted{color:#777;font-size:13px}
</style></head>
<body><main>
<h1>graftwork classifier</h1>
<p class="sub" id="meta">loading model info&hellip;</p>
<div id="drop" tabindex="0">Drop an image here, or click to choose one
 <input id="pick" type="file" accept="image/*" hidden></div>
<div id="out"><img id="preview" alt=""><div id="bars"></div></div>
</main>
<script>
const TOP_K = __TOP_K__;
const drop = document.getElementById('drop'), pick = document.getElementById('pick');
const bars = document.getElementById('bars'), preview = document.getElementById('preview');
function esc(s){return String(s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;',
 '"':'&quot;',"'":'&#39;'}[c]));}
fetch('health').then(r=>r.json()).then(h=>{document.getElementById('meta').textContent=
 h.model.backbone+' \\u00b7 '+h.model.strategy+' \\u00b7 '+h.classes.length+' classes: '+
 h.classes.join(', ');}).catch(()=>{});
async function predict(blob, name){
 preview.src = URL.createObjectURL(blob);
 bars.innerHTML = '<p class="muted">predicting&hellip;</p>';
 const form = new FormData(); form.append('file', blob, name || 'image');
 try {
  const t0 = performance.now();
  const r = await fetch('predict?top_k=' + TOP_K, {method:'POST', body: form});
  const j = await r.json();
  if (!r.ok) { bars.innerHTML = '<p class="err">' + esc(j.error || r.status) + '</p>'; return; }
  const p = j.predictions[0];
  bars.innerHTML = p.top_k.map(t => '<div class="row"><div class="lab"><b>' + esc(t.label) +
   '</b><span>' + (100*t.prob).toFixed(1) + '%</span></div><div class="bar"><div class="fill" ' +
   'style="width:' + (100*t.prob).toFixed(1) + '%"></div></div></div>').join('') +
   '<p class="muted">' + esc(p.filename) + ' \\u00b7 ' + Math.round(performance.now()-t0) +
   ' ms</p>';
  document.body.dataset.done = '1';
 } catch (e) { bars.innerHTML = '<p class="err">' + esc(e) + '</p>'; }
}
drop.onclick = () => pick.click();
drop.onkeydown = e => { if (e.key === 'Enter' || e.key === ' ') pick.click(); };
pick.onchange = () => { if (pick.files[0]) predict(pick.files[0], pick.files[0].name); };
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over');
 const f = e.dataTransfer.files[0]; if (f) predict(f, f.name); };
if (new URLSearchParams(location.search).get('demo')) {
 const c = document.createElement('canvas'); c.width = c.height = 64;
 const g = c.getContext('2d'); g.fillStyle = 'rgb(220,40,40)'; g.fillRect(0, 0, 64, 64);
 for (let i = 0; i < 300; i++) { const v = (i * 97) % 60 - 30;
  g.fillStyle = 'rgb(' + (220+v) + ',' + (40+v) + ',' + (40+v) + ')';
  g.fillRect((i * 13) % 64, (i * 29) % 64, 3, 3); }
 c.toBlob(b => predict(b, 'demo.png'), 'image/png');
}
</script></body></html>
"""
