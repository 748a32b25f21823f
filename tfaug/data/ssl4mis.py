"""The ACDC patient lists of the semi-supervised segmentation literature (scheme ``ssl4mis``).

SSL4MIS, BCP and UniMatch divide the 100 patients of ACDC's training set the same way: 70
training, 10 validation and 20 test patients, each with its end-diastole and end-systole
frame. With N_L labeled patients, the labeled set is the first N_L patients of the training
list in its published order and the unlabeled set is the other training patients.

The ids below are facts read from these public files (no code is taken from them):

* ``HiLab-git/SSL4MIS``, commit ``06df6047a59aba9988ced8331998b5957ecb356b``:
  ``data/ACDC/train_slices.list`` (the training patients in the order the labeled prefix is
  taken from: ``patients_to_slices`` in ``code/train_*_2D.py`` gives 68 slices for 3
  patients and 136 for 7, exactly the slices of the first 3 and 7 patients of that list),
  ``data/ACDC/train.list`` (the same 70 patients in the same order), ``data/ACDC/val.list``
  and ``data/ACDC/test.list`` (entries ``patientXXX_frame01`` / ``_frame02``: the two
  annotated frames of a patient, renumbered).
* ``DeepMed-Lab-ECNU/BCP``, commit ``7879f988872f561231f73eecd5b4e232e54fa2bd``:
  ``data_split/ACDC/{train,val,test,train_slices}.list``, identical to SSL4MIS's files; its
  ``patients_to_slices`` (``code/ACDC_BCP_train.py``) adds 32 slices for one patient, i.e.
  patient099.
* ``LiheYoung/UniMatch``, commit ``0324f3dd4a22128105a5eb135d2586c0bb3cc647``:
  ``more-scenarios/medical/splits/acdc/{1,3,7}/labeled.txt`` (the slices of patient099; of
  patient099, 038, 050; of those and 100, 058, 021, 049) and ``unlabeled.txt`` (the other
  69 / 67 / 63 training patients), ``val.txt`` and ``test.txt`` (the same patients as
  SSL4MIS's ``val.list`` and ``test.list``).
"""

from __future__ import annotations


def _ids(numbers: str) -> tuple[str, ...]:
    """``"099 038"`` → ``("patient099", "patient038")``, order kept."""
    return tuple(f"patient{number}" for number in numbers.split())


TRAINING: tuple[str, ...] = _ids(
    """
    099 038 050 100 058 021 049 020 072 040 060 089 004 056 098 096 031 018 094 047
    048 055 097 074 043 041 063 037 095 054 026 088 032 069 006 071 012 073 061 017
    025 010 057 029 051 005 036 046 062 034 076 092 070 077 067 003 091 016 014 044
    042 090 053 027 035 086 023 009 079 015
    """
)
"""The 70 training patients, in the published order (labeled = the first N_L)."""

VALIDATION: tuple[str, ...] = _ids("028 085 082 087 019 030 078 045 002 039")
"""The 10 validation patients (model selection), in ``val.list`` order."""

TEST: tuple[str, ...] = _ids(
    "011 013 084 033 093 022 068 024 083 081 080 001 007 066 008 065 075 064 059 052"
)
"""The 20 test patients (reported scores), in ``test.list`` order."""

PUBLISHED_N_LABELED: tuple[int, ...] = (1, 3, 7)
"""The labeled-patient counts the three papers report on ACDC (SSL4MIS also 14 to 70)."""
