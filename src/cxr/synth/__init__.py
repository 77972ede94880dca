"""Phantom chest radiographs with planted findings and a pixel mask per finding.

The phantoms are the built-in data set of ``cxr demo`` and the test data of the whole
toolkit: they are cheap to make, need no download and come with the truth, both the
labels and *where* each finding is (for checking Grad-CAM localisation).

Each image is drawn with vectorised numpy from a small geometric model of a PA chest
film: a dark background, the soft-tissue body, two dark lung fields with lung markings,
the heart shadow over the lower middle, the spine, posterior rib arcs, clavicles, the
diaphragm domes, smooth low-frequency and pixel noise. A patient's anatomy
(:class:`PatientAnatomy`) is drawn once; every image of that patient (its follow-ups)
uses it with small variations (position, inspiration, heart size), and each image has
its own exposure (a film-like sigmoid characteristic curve of random slope and level,
gamma, noise). Lesions are placed in aerated lung, clear of the heart, fluid, the
pneumothorax rim and each other.

Findings (the names of :data:`SYNTH_LABELS`, canonical :mod:`cxr.labels` spelling):

``Cardiomegaly``
    heart shadow enlarged: cardiothoracic ratio 0.55-0.68 (normals 0.37-0.475).
    Mask: the heart shadow.
``Effusion``
    bright basal opacity in one or both costophrenic angles, with a meniscus-shaped
    upper border (higher at the chest wall). Mask: the fluid region.
``Mass``
    one round, slightly lobulated opacity of diameter 8-15 % of the image in a lung.
    Mask: the disc.
``Nodule``
    one or two small round opacities of diameter 4-7.5 % of the image (a nodule is under 3 cm,
    about 7.5 % of a 40-cm film; a mass is larger). Mask: the discs.
``Pneumothorax``
    the lung of one side collapsed towards the hilum: a dark rim along its apical and
    lateral edge without lung markings (ribs show faintly), bounded by a thin bright
    pleural line. Mask: the lucent rim.
``Consolidation``
    a patchy, elongated, ill-defined opacity with air bronchograms, confined to one lung
    field. Mask: where it is (its faint edge included).

Randomness: :func:`render_phantom` takes a :class:`numpy.random.Generator`. It first
draws one seed for the normal image and one per label of :data:`SYNTH_LABELS`, so that
two calls with generators in the same state and the same anatomy draw the same image
whatever the findings, except for the findings themselves (compare an image with and
without a finding pixel by pixel). :func:`generate_phantoms` derives every random
stream from ``SeedSequence(seed, spawn_key=...)``: the plan (patients, labels) from key
``(0,)``, patient ``p``'s anatomy from ``(1, p)`` and its image ``k`` from ``(2, p, k)``;
the files are therefore byte-identical for one configuration whatever ``workers`` is.
"""

from cxr.synth.anatomy import PatientAnatomy, sample_anatomy
from cxr.synth.config import (
    ENLARGED_CTR,
    MASS_DIAMETER,
    NODULE_DIAMETER,
    NORMAL_CTR,
    SYNTH_LABELS,
    SynthConfig,
)
from cxr.synth.generate import generate_phantoms, phantom_for, table_from_dir
from cxr.synth.render import PhantomRender, render_phantom, render_phantom_details

__all__ = [
    "ENLARGED_CTR",
    "MASS_DIAMETER",
    "NODULE_DIAMETER",
    "NORMAL_CTR",
    "SYNTH_LABELS",
    "PatientAnatomy",
    "PhantomRender",
    "SynthConfig",
    "generate_phantoms",
    "phantom_for",
    "render_phantom",
    "render_phantom_details",
    "sample_anatomy",
    "table_from_dir",
]
