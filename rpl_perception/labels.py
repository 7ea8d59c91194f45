"""What label values mean, in one place: the Cityscapes classes and colours, the anomaly ground
truth and the training targets.

* Semantic labels are Cityscapes train ids ``0 … len(CITYSCAPES_CLASSES) - 1``; :data:`VOID` (255)
  is unlabelled in every map.
* Anomaly ground truth (evaluation sets, bags): :data:`IN_DISTRIBUTION` (0), :data:`ANOMALY` (1),
  anything else void (:data:`VOID` in the released sets).
* Training targets are semantic labels with pasted outlier objects: :data:`OUTLIER` (254) marks
  their pixels, and in an outlier source's own mask :data:`BACKGROUND` (0) is the rest.

A model's own class count is ``CheckpointMeta.num_inlier`` (the class names in its file); the
Cityscapes count is only the default of code that has no model at hand.
"""

import numpy as np

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "NUM_CITYSCAPES_CLASSES", "IN_DISTRIBUTION",
           "ANOMALY", "OUTLIER", "BACKGROUND", "VOID"]

#: the 19 Cityscapes train ids, in order
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_CITYSCAPES_CLASSES = len(CITYSCAPES_CLASSES)

#: RGB colours of the 19 Cityscapes train ids (the official cityscapesScripts colours)
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

#: anomaly ground truth: an in-distribution pixel
IN_DISTRIBUTION = 0
#: anomaly ground truth: an anomalous pixel
ANOMALY = 1
#: training target: a pixel of a pasted outlier object (the official RPL code's 254)
OUTLIER = 254
#: an outlier source's mask: a pixel that is not part of the object
BACKGROUND = 0
#: unlabelled: enters no metric and no loss term
VOID = 255
