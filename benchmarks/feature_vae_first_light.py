"""Directional first light of the feature-space VAE (benchmarks/HISTORY.md, 2026-12-07): synthetic
panels, 128 px, 8 epochs; prints each candidate score's test ROC-AUC (test in view: not a choice).
Run: .venv/bin/python benchmarks/feature_vae_first_light.py"""
import pathlib
import tempfile
import time

from sklearn.metrics import roc_auc_score

from pipeline.config import PanelConfig
from pipeline.ingest import ingest
from pipeline.scoring import score_crops
from pipeline.synth import generate
from pipeline.training import train_model
from pipeline.workspace import WorkDirs, load_crops, load_split

d = pathlib.Path(tempfile.mkdtemp())
generate(d/'raw', n=160, seed=3)
cfg = PanelConfig().replace('ingest', image_size=128).replace('model', backbone='efficientnet_lite0', latent_dim=16, head_steps=0).replace('train', epochs=8, members=1, min_epochs=2)
ingest(d/'raw', d/'w', d/'raw'/'labels.csv', cfg.ingest)
m = WorkDirs(d/'w').manifest
tr = load_crops(load_split(m, ['train'], True), WorkDirs(d/'w').crops); va = load_split(m, ['val'], True)
vx = load_crops(va, WorkDirs(d/'w').crops)
te = load_split(m, ['test']); tx = load_crops(te, WorkDirs(d/'w').crops)
t=time.time(); r = train_model(tr, vx, cfg, progress=False); print('train s', time.time()-t, len(tr), r.history[-1])
t=time.time(); s = score_crops(r.model, tx, cfg.score, cfg.model); print('score s', time.time()-t)
y = (te['label'] != 'ok').to_numpy()
for k,v in s.scores.items(): print(k, round(roc_auc_score(y, v),3))
print(r.latent.summary)
