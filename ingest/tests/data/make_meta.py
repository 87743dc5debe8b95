# Makes meta_compressed.mat and meta_plain.mat (run in this folder; needs numpy and scipy).
# The ILSVRC2012 devkit's meta.mat in miniature: `synsets`, a 4x1 struct array with the devkit's
# fields; ids 1..3 are leaf classes (in an order that is not sorted by wnid), 4 is a parent.
import numpy as np, scipy, scipy.io
fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
rows = [
    (1, "n02102040", "English springer, English springer spaniel", "a breed of spaniel", 0, np.zeros((0, 0)), 0, 1300),
    (2, "n01443537", "goldfish, Carassius auratus", "small golden or orange-red freshwater fishes", 0, np.zeros((0, 0)), 0, 1300),
    (3, "n01440764", "tench, Tinca tinca", "freshwater dace-like game fish", 0, np.zeros((0, 0)), 0, 1300),
    (4, "n01439121", "cyprinid, cyprinid fish", "a soft-finned fish — ü", 2, np.array([[2.0, 3.0]]), 1, 0),
]
s = np.zeros((4, 1), dtype=[(f, object) for f in fields])
for i, r in enumerate(rows):
    for f, v in zip(fields, r):
        s[i, 0][f] = float(v) if isinstance(v, int) else v
for name, comp in [("meta_compressed.mat", True), ("meta_plain.mat", False)]:
    scipy.io.savemat(name, {"synsets": s}, do_compression=comp, format="5")
    back = scipy.io.loadmat(name, squeeze_me=True)["synsets"]
    print(name, [(int(x["ILSVRC2012_ID"]), str(x["WNID"])) for x in back], scipy.__version__)
