"""The datasets of the Medical SAM3 paper: what they are, where users get them, how to read them.

:data:`REGISTRY` lists the paper's 33 training sets and 7 external (unseen) test sets
(names and Dice results from the paper, ../docs/paper.md), plus two sets that medsam3
itself uses: the CVPR-2025 BiomedSegFM 3D collection (the later 3D release) and the
Colin27 + AAL brain atlas that Debian ships (the offline end-to-end test).

Facts come from each dataset's own publication and download page as far as they are
known to us; every field we could not verify is listed in :attr:`DatasetInfo.uncertain`
and shown by ``medsam3 data list`` as "(unverified)". Check licences on the download
page before use: several sets are for non-commercial research only.

``layout`` is the converter that reads the download as it unpacks (``None`` when the
raw files need a step first: XML / LabelMe / contour annotations, BMP / GIF / PPM
pictures; ``notes`` says which). :func:`prepare_dataset` runs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsam3.errors import ArgumentError

ROLES = ("train", "external", "extra")


@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset.

    Attributes:
        name: registry key (``medsam3 data prepare NAME``).
        title: the dataset's own name.
        role: ``train`` (one of the paper's 33 training sets), ``external`` (its 7 unseen
            test sets) or ``extra``.
        modality: the kind of imaging, in words ("endoscopy", "X-ray angiography").
        image_modality: the normalisation modality (:data:`medsam3.image.MODALITIES`).
        dim: 2 or 3.
        classes: the classes as medsam3 prompts them.
        layout: converter name, or ``None`` when the download needs a step first.
        conversions: converter options, one dict per conversion whose items are merged
            (``subdir``: run it on that folder; ``id_suffix``: tell the items apart).
        licence: as stated by the provider.
        source: where users obtain it.
        citation: the publication to cite.
        notes: layout facts and caveats.
        paper_dice: Dice % text-only (vanilla SAM3, Medical SAM3) from the paper, if reported.
        uncertain: names of the fields above that we could not verify.
        default_root: where the data lies when a system package installs it.
        prompts: class (as ``classes`` names it) -> the text prompt the paper's model was
            trained and evaluated with (``data merge --prompts paper`` renames to it).
        paper_name: the dataset's name in the paper's public run (its evaluation tables).
        verified_from: where the verified facts were read (URLs, ``repo:path``).
        doubts: what remains open, in words (the fields named in ``uncertain``, and why).
    """

    name: str
    title: str
    role: str
    modality: str
    image_modality: str | None
    dim: int
    classes: tuple[str, ...]
    layout: str | None
    conversions: tuple[dict[str, Any], ...] = ()
    licence: str = "unknown"
    source: str = ""
    citation: str = ""
    notes: str = ""
    paper_dice: tuple[float, float] | None = None
    uncertain: tuple[str, ...] = ()
    default_root: str | None = None
    prompts: tuple[tuple[str, str], ...] = ()
    paper_name: str = ""
    verified_from: tuple[str, ...] = ()
    doubts: str = ""

    @property
    def paper_prompts(self) -> dict[str, str]:
        """Class -> the paper's prompt for it (only the classes whose prompt is known)."""
        return dict(self.prompts)

    @property
    def ready(self) -> bool:
        """A converter reads the download and the layout facts it relies on are verified."""
        return self.layout is not None and not ({"layout", "conversions"} & set(self.uncertain))

    def as_dict(self) -> dict[str, Any]:
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        out["prompts"] = self.paper_prompts
        out["ready"] = self.ready
        return out


def _d(name, title, role, modality, image_modality, dim, classes, layout=None, conversions=(),
       verified_from=(), **kw) -> DatasetInfo:
    return DatasetInfo(name, title, role, modality, image_modality, dim, tuple(classes), layout,
                       tuple(conversions), verified_from=tuple(verified_from), **kw)


_UNKNOWN_ID = ("title", "modality", "classes", "licence", "source", "citation")

#: m2caiSeg's mask colours (torch_em's m2caiseg loader, LABEL_MAPS), by our class names
M2CAISEG_COLOURS = {
    "grasper": [0, 85, 170], "bipolar forceps": [0, 85, 255], "electrocautery hook": [0, 170, 255],
    "scissors": [0, 255, 85], "clipper": [0, 255, 170], "irrigator": [85, 0, 170],
    "specimen bag": [85, 0, 255], "trocar": [170, 85, 85], "clip": [170, 170, 170], "liver": [85, 170, 0],
    "gallbladder": [85, 170, 255], "fat": [85, 255, 0], "abdominal wall": [85, 255, 170],
    "cystic artery": [170, 0, 255], "intestine": [255, 0, 255], "bile": [255, 255, 0], "blood": [255, 0, 0]}

REGISTRY_LIST: tuple[DatasetInfo, ...] = (
    # ------------------------------------------------------------------ 33 training sets
    _d("arcade", "ARCADE (Automatic Region-based Coronary Artery Disease diagnostics)", "train",
       "X-ray coronary angiography", "XR", 2, ["coronary artery", "stenosis"], "coco",
       [{"subdir": "syntax", "class_map": {"*": "coronary artery"}, "id_suffix": "syntax"},
        {"subdir": "stenosis", "class_map": {"*": "stenosis"}, "id_suffix": "stenosis"}],
       licence="CC BY 4.0", source="https://zenodo.org/records/10390295",
       citation="Popov M. et al., Dataset for Automatic Region-based Coronary Artery Disease "
                "Diagnostics Using X-Ray Angiography Images, Scientific Data 11:20 (2024)",
       notes="COCO JSON per task (syntax: 26 SYNTAX artery segments, merged here into 'coronary "
             "artery'; stenosis) with train/val/test folders of images/ + annotations/.",
       uncertain=("licence", "source", "classes")),
    _d("bkai-igh-neopolyp", "BKAI-IGH NeoPolyp", "train", "colonoscopy", "RGB", 2,
       ["neoplastic polyp", "non-neoplastic polyp"], "folder2d",
       [{"images_dir": "train/train", "masks_dir": "train_gt/train_gt",
         "colors": {"neoplastic polyp": [255, 0, 0], "non-neoplastic polyp": [0, 255, 0]}}],
       licence="Kaggle competition data (competition rules)",
       source="https://www.kaggle.com/competitions/bkai-igh-neopolyp",
       citation="Lan P.N. et al., NeoUNet: Towards accurate colon polyp segmentation and neoplasm "
                "detection, ISVC 2021",
       notes="1000 training images; masks are colour-coded JPEGs (red neoplastic, green "
             "non-neoplastic), read with nearest-colour matching.",
       uncertain=("licence", "citation")),
    _d("btxrd", "BTXRD (Bone Tumor X-ray Radiograph Dataset)", "train", "X-ray radiography", "XR", 2,
       ["bone tumor"], "labelme", [{"class_name": "bone tumor"}],
       licence="CC BY-NC-ND 4.0 per the paper's usage notes (figshare lists CC BY 4.0)",
       source="https://doi.org/10.6084/m9.figshare.27865398",
       citation="Yao S. et al., A radiograph dataset for the classification, localization, and "
                "segmentation of primary bone tumors, Scientific Data 12:88 (2025)",
       notes="3,746 radiographs (1,867 with tumours) as images/IMG000001.jpeg ... (27 end in .jpg) "
             "with one LabelMe JSON per tumour image in Annotations/IMG000001.json (LabelMe 5.0.1: "
             "'shapes' with 'points' and shape_type 'polygon' for the tumour outline, 'rectangle' "
             "for its box; imageHeight/imageWidth): the polygons are rasterised, whatever their "
             "label, as 'bone tumor'; the boxes are left out; normal images have no JSON and are "
             "left out. dataset.xlsx holds the per-image tumour type.",
       uncertain=("licence",),
       verified_from=("Yao S. et al., Scientific Data 12:88 (2025), Data Records (images/ + "
                      "Annotations/ LabelMe JSON)",
                      "public BTXRD loaders: preprocess_btxrd.py (reads BTXRD/Annotations/*.json: "
                      "js['shapes'], shape_type 'rectangle' as boxes, 'polygon' as masks, imageHeight/"
                      "imageWidth; images/*.jpeg; dataset.xlsx) and a BTXRD data-audit README "
                      "('BTXRD Dataset Specification': 1,867 LabelMe JSON, IMG000001.json for "
                      "IMG000001.jpeg, 27 images .jpg)"),
       doubts="the shape labels (tumour subtype or 'tumor') are not read: every polygon is one "
              "'bone tumor'; none of the sources shows a polygon with holes or several polygons per "
              "tumour, which are filled one by one"),
    _d("bus-uclm", "BUS-UCLM breast ultrasound lesion segmentation", "train", "breast ultrasound", "US", 2,
       ["breast tumor"], "folder2d",
       [{"images_dir": "images", "masks_dir": "masks", "case_pattern": "^([A-Za-z]{4})_",
         "colors": {"breast tumor": [[0, 255, 0], [255, 0, 0]]}}],
       licence="CC BY 4.0", source="https://data.mendeley.com/datasets/7fvgj4jsp7",
       citation="Vallez N. et al., BUS-UCLM: Breast ultrasound lesion segmentation dataset, "
                "Scientific Data 12 (2025), doi:10.1038/s41597-025-04562-3",
       notes="683 PNG images of 38 patients (419 normal, 174 benign, 90 malignant) unpacked as "
             "'BUS-UCLM Breast ultrasound lesion segmentation dataset/BUS-UCLM/images/CCCC_NNN.png' "
             "with an RGB mask of the same name in masks/: black normal tissue, green (G = 255) "
             "benign and red (R = 255) malignant lesions, both read as 'breast tumor'; normal "
             "images have all-black masks (class absent). The first four letters name the patient: "
             "a patient's images share a split (the authors' own test split holds patients COPE, "
             "ANFO, ELCO, CRCI, FLKA).",
       uncertain=("licence",),
       verified_from=("Vallez N. et al., Scientific Data (2025), abstract: 'RGB segmentation masks in "
                      "individual files, with black indicating normal breast tissue and green and red "
                      "indicating benign and malignant lesions'",
                      "github.com/noeliavallez/BUS-UCLM-Dataset: README.md (zip 7fvgj4jsp7-1, folder "
                      "name), extract_coco_annotations.py (data/BUS-UCLM/images/*.png, masks/ same "
                      "name, class = G == 255 benign, R == 255 malignant), prepare_partitions.py "
                      "(patient = first 4 letters; test patients)"),
       doubts="Mendeley shows CC BY 4.0 while one public index lists CC BY-NC 4.0 for version 2: check "
              "the version you download; the split is by patient hash, not the authors' five test "
              "patients"),
    _d("busi", "BUSI (Breast Ultrasound Images Dataset)", "train", "breast ultrasound", "US", 2,
       ["breast tumor"], "folder2d", [{"class_name": "breast tumor"}],
       licence="CC0 1.0 (as listed on Kaggle)", source="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
       citation="Al-Dhabyani W. et al., Dataset of breast ultrasound images, Data in Brief 28:104863 (2020)",
       notes="780 images in benign/ malignant/ normal/; 'X (n)_mask.png' beside each image, extra "
             "lesions as '_mask_1.png' (OR-ed); normal images have empty masks (class absent).",
       uncertain=("licence",)),
    _d("breast-cancer-segmentation", "Breast Cancer Segmentation", "train", "unknown", None, 2,
       ["breast cancer tissue"], None,
       notes="The paper names it only as 'Breast Cancer Segmentation' (Dice 16.3 -> 43.8); which "
             "public set this is (a Kaggle breast ultrasound or histology set) is not known to us.",
       paper_dice=(16.3, 43.8), uncertain=_UNKNOWN_ID,
       doubts="searched: the public run (prompt 'Breast Cancer Tissue', no file names), code and page "
              "search; candidates with that name: BCSS (Breast Cancer Semantic Segmentation, TCGA "
              "histology, 21 tissue classes) and several Kaggle/GitHub 'Breast Cancer Segmentation' "
              "ultrasound copies of BUSI; none confirmed"),
    _d("covid-qu-ex", "COVID-QU-Ex", "train", "chest X-ray", "XR", 2, ["lungs", "covid-19 infection"],
       "folder2d",
       [{"subdir": "Lung Segmentation Data", "images_dir": "images", "masks_dir": "lung masks",
         "class_name": "lungs", "id_suffix": "lungs"},
        {"subdir": "Infection Segmentation Data", "images_dir": "images", "masks_dir": "infection masks",
         "class_name": "covid-19 infection", "id_suffix": "infection"}],
       licence="CC BY-SA 4.0", source="https://www.kaggle.com/datasets/anasmohammedtahir/covidqu",
       citation="Tahir A.M. et al., COVID-19 infection localization and severity grading from chest "
                "X-ray images, Computers in Biology and Medicine 139:105002 (2021)",
       notes="33,920 X-rays with lung masks; 2,913 COVID-19 images also with infection masks; "
             "Train/Val/Test folders set the split.",
       uncertain=("licence",)),
    _d("coph100", "COph100", "train", "fundus photography", "RGB", 2, ["optic disc"], None,
       notes="Listed by the paper (Dice 34.1 -> 63.1); its layout and target classes are not known "
             "to us.", paper_dice=(34.1, 63.1), uncertain=_UNKNOWN_ID,
       doubts="searched: the public run (prompt 'Optic Disc', no file names), code, docs and page "
              "search for 'COph100': no public dataset of that name found"),
    _d("ct2us-kidney", "CT2US for kidney segmentation", "train", "kidney ultrasound (synthesised from CT)",
       "US", 2, ["kidney"], "folder2d",
       [{"images_dir": "slice/slice", "masks_dir": "mask/mask", "class_name": "kidney"}],
       citation="Song Y. et al., CT2US: Cross-modal transfer learning for kidney segmentation in "
                "ultrasound images with synthesized data, Ultrasonics 122:106706 (2022)",
       source="https://www.kaggle.com/datasets/siatsyx/ct2usforkidneyseg",
       notes="Kaggle download (siatsyx/ct2usforkidneyseg) unpacks as slice/slice/*.png (synthetic "
             "ultrasound frames) with masks of the same name in mask/mask/*.png; masks read as "
             "binary (above half their maximum).",
       uncertain=("licence",),
       verified_from=("public ultrasound-SAM loader USForKidney (slice/slice/*.png images, "
                      "mask/mask/<same name> masks read as grey) and its download script "
                      "('kaggle datasets download -d siatsyx/ct2usforkidneyseg --unzip')",),
       doubts="the mask values are not stated by any source we read (the loader splits masks per "
              "grey value): read as one binary kidney mask; the licence is the Kaggle page's"),
    _d("chest-xray-pneumothorax", "Chest X-ray pneumothorax (SIIM-ACR)", "train", "chest X-ray", "XR", 2,
       ["pneumothorax"], "folder2d",
       [{"images_dir": "png_images", "masks_dir": "png_masks", "class_name": "pneumothorax",
         "split_in_name": True}],
       licence="SIIM-ACR Pneumothorax Segmentation challenge terms",
       source="https://www.kaggle.com/datasets/vbookshelf/pneumothorax-chest-xray-images-and-masks",
       citation="SIIM-ACR Pneumothorax Segmentation (Kaggle, 2019)",
       notes="PNG re-release of the SIIM-ACR challenge (the original ships DICOM + run-length CSV): "
             "siim-acr-pneumothorax/png_images/N_train_L_.png | N_test_L_.png (L = 1 with "
             "pneumothorax) with a mask of the same name in png_masks/ (0 / 255), plus "
             "stage_1_train_images.csv / stage_1_test_images.csv (new_filename, has_pneumo); the "
             "'train'/'test' in the file name sets the split; most masks are empty (class absent).",
       uncertain=("title", "licence"),
       verified_from=("public loaders of the Kaggle set: '../input/pneumothorax-chest-xray-images-"
                      "and-masks/siim-acr-pneumothorax/png_images' + 'png_masks', stage_1_train_"
                      "images.csv / stage_1_test_images.csv with new_filename, has_pneumo; a "
                      "preparation script: 'Filename format: {id}_train_{label}_.png or "
                      "{id}_test_{label}_.png', mask = same name in png_masks; masks read as x > 127",),
       doubts="that the paper's 'Chest X-Ray Pneumothorax' is this Kaggle PNG release (the public run "
              "names it Chest_X-Ray_Pneumothorax only)"),
    _d("chest-xray-masks-and-labels", "Chest X-ray masks and labels (Montgomery + Shenzhen)", "train",
       "chest X-ray", "XR", 2, ["lungs"], "folder2d",
       [{"images_dir": "CXR_png", "masks_dir": "masks", "class_name": "lungs", "unpaired": "skip"}],
       licence="public (U.S. National Library of Medicine)",
       source="https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels",
       citation="Jaeger S. et al., Two public chest X-ray datasets for computer-aided screening of "
                "pulmonary diseases, Quant Imaging Med Surg 4(6):475-477 (2014)",
       notes="800 X-rays, 704 lung masks ('_mask' suffix for Shenzhen); images without a mask are skipped.",
       uncertain=("licence",)),
    _d("cholecseg8k", "CholecSeg8k", "train", "laparoscopic surgery video", "RGB", 2,
       ["abdominal wall", "liver", "gastrointestinal tract", "fat", "grasper", "connective tissue",
        "blood", "cystic duct", "electrocautery hook", "gallbladder", "hepatic vein", "liver ligament"],
       "cholecseg8k", licence="CC BY-NC-SA 4.0", source="https://www.kaggle.com/datasets/newslab/cholecseg8k",
       citation="Hong W.-Y. et al., CholecSeg8k: A Semantic Segmentation Dataset for Laparoscopic "
                "Cholecystectomy Based on Cholec80, arXiv:2012.12453 (2020)",
       notes="8,080 frames of 17 Cholec80 videos (videoNN/videoNN_FFFFF/frame_N_endo.png), 13 classes "
             "with background; '_endo_watershed_mask.png' holds grey codes (50 background, 11 abdominal "
             "wall, 21 liver, 13 GI tract, 12 fat, 31 grasper, 23 connective tissue, 24 blood, 25 cystic "
             "duct, 32 L-hook electrocautery, 22 gallbladder, 33 hepatic vein, 5 liver ligament; 255 "
             "edges and 0 unannotated pixels are ignored). Frames of one video share a split.",
       uncertain=("licence",),
       verified_from=("Kaggle page's code table as quoted by public CholecSeg8k loaders (e.g. "
                      "watershed_to_class: '#505050' background ... '#050505' liver ligament)",)),
    _d("drive", "DRIVE (Digital Retinal Images for Vessel Extraction)", "train", "fundus photography",
       "RGB", 2, ["retinal blood vessel"], "drive",
       licence="research use after registration", source="https://drive.grand-challenge.org/",
       citation="Staal J. et al., Ridge-based vessel segmentation in color images of the retina, "
                "IEEE TMI 23(4):501-509 (2004)",
       notes="40 images training|test/images/NN_training.tif with first-observer vessel masks "
             "1st_manual/NN_manual1.gif (written as PNG); mask/ holds field-of-view masks, not labels.",
       paper_dice=(24.8, 55.8), uncertain=("licence",)),
    _d("fetoplac", "FetoPlac (fetoscopy placental vessels)", "train", "fetoscopy", "RGB", 2,
       ["placental vessel"], "folder2d", [{"class_name": "placental vessel"}],
       source="https://www.ucl.ac.uk/interventional-surgical-sciences/fetoscopy-placenta-data",
       citation="Bano S. et al., Deep placental vessel segmentation for fetoscopic mosaicking, "
                "MICCAI 2020",
       notes="Frames of 6 in-vivo fetoscopy videos (anon001, anon002, anon003, anon005, anon010, "
             "anon012) with vessel masks, one folder per video holding images/ and masks/ (the "
             "authors' code trains leave-one-video-out on them); masks read as binary.",
       paper_dice=(56.6, 77.0), uncertain=("title", "licence", "conversions"),
       verified_from=("github.com/sophiabano/Placental-Vessel-Segmentation-Registration: "
                      "Segmentation/main.py (dataset/<video>/images + dataset/<video>/masks, the six "
                      "video names) and data.py (mask = mean over RGB > 0)",),
       doubts="'FetoPlac' is not a published name: it is either Bano et al.'s MICCAI 2020 placental "
              "vessel set (the layout above, from the authors' training code; whether the UCL "
              "download keeps it, and whether a mask has its image's file name, is not stated: the "
              "code pairs them by sorted order) or FetReg2021 (synapse syn25313156; label maps 0 "
              "background, 1 vessel, 2 tool, 3 fetus, which the binary reading here would merge). "
              "Check which before use"),
    _d("glas", "GlaS (Gland Segmentation in Colon Histology)", "train", "histopathology (H&E)", "RGB", 2,
       ["gland"], "glas",
       licence="research use", source="https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/",
       citation="Sirinukunwattana K. et al., Gland segmentation in colon histology images: The GlaS "
                "challenge contest, Medical Image Analysis 35:489-502 (2017)",
       notes="165 BMP images train_N / testA_N / testB_N with '_anno.bmp' gland instance maps "
             "(written as PNG; each gland an instance of 'gland'; testA and testB are test).",
       paper_dice=(68.9, 88.2), uncertain=("licence",)),
    _d("isic-2018", "ISIC 2018 Task 1 (lesion boundary segmentation)", "train", "dermoscopy", "RGB", 2,
       ["skin lesion"], "folder2d",
       [{"images_dir": "ISIC2018_Task1-2_Training_Input", "masks_dir": "ISIC2018_Task1_Training_GroundTruth",
         "mask_suffix": "_segmentation", "class_name": "skin lesion"}],
       licence="CC BY-NC 4.0", source="https://challenge.isic-archive.com/data/#2018",
       citation="Codella N. et al., Skin Lesion Analysis Toward Melanoma Detection 2018, "
                "arXiv:1902.03368; Tschandl P. et al., The HAM10000 dataset, Sci Data 5:180161 (2018)",
       notes="2,594 training JPEGs with 'ISIC_XXXXXXX_segmentation.png' masks in a separate folder."),
    _d("intraretinal-cystoid-fluid", "Intraretinal Cystoid Fluid (OCT)", "train", "OCT", "OTHER", 2,
       ["intraretinal cystoid fluid"], "cystoid",
       licence="CC BY-NC-SA 4.0 (as listed by Dataset Ninja)",
       source="https://www.kaggle.com/datasets/zeeshanahmed13/intraretinal-cystoid-fluid",
       notes="1,460 OCT B-scans with cystoid macular edema masks (6,542 fluid regions), released "
             "2022 by MUET and LUMHS (Pakistan); the Kaggle download unpacks as "
             "2021-training-data-ZA/2021-training-data-ZA/<case>/images/*.jpeg with the case's mask "
             "in <case>/masks/: channel 0 above half its maximum, holes filled, one binary mask per "
             "image; the case folder sets the split.",
       paper_dice=(62.0, 85.0), uncertain=("citation",),
       verified_from=("github.com/dataset-ninja/intraretinal-cystoid-fluid: src/settings.py (Kaggle "
                      "zeeshanahmed13/intraretinal-cystoid-fluid, CC BY-NC-SA 4.0, 2022), SUMMARY.md "
                      "(1,460 images, class 'cystic macular edema'), src/convert.py (glob "
                      "<download>/*/*/*.jpeg under 2021-training-data-ZA/2021-training-data-ZA; mask = "
                      "the first file of the masks/ folder beside images/, channel 0, holes filled)",),
       doubts="the mask's file name is not stated (the public loader takes masks/'s first file; here "
              "a file named as the image wins, else masks/ must hold one file); the threshold at half "
              "the maximum is ours (the loader takes any non-zero value, which keeps JPEG noise); the "
              "citation is not given by the sources read"),
    _d("kvasir-seg", "Kvasir-SEG", "train", "colonoscopy", "RGB", 2, ["polyp"], "folder2d",
       [{"images_dir": "images", "masks_dir": "masks", "class_name": "polyp"}],
       licence="research and educational use", source="https://datasets.simula.no/kvasir-seg/",
       citation="Jha D. et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020",
       notes="1000 JPEG images with same-named JPEG masks (compressed: thresholded at half maximum).",
       uncertain=("licence",)),
    _d("mmdb", "MMDB", "train", "cell microscopy", None, 2, ["cell"], None,
       notes="Not identified. The public run prompts it with 'Cell', and its per-image results "
             "there equal PCMMD's image for image (the same images under two names): probably a "
             "multiple-myeloma name for the PCMMD crops; use the pcmmd entry.",
       uncertain=_UNKNOWN_ID,
       doubts="searched: the public run (results_per_sample.csv has no file names), torch_em's "
              "dataset list, code and page search for 'MMDB' microscopy; no dataset of that name "
              "with cell masks found"),
    _d("mucic-colon-tissue", "MUCIC colon tissue (CBIA simulated 3D fluorescence)", "train",
       "fluorescence microscopy (simulated)", "OTHER", 3, ["cell"], "mucic", [{"components": True}],
       source="https://cbia.fi.muni.cz/datasets/ (ColonTissue_LowNoise_3D_HDF5.zip, "
              "ColonTissue_HighNoise_3D_HDF5.zip)",
       citation="Svoboda D. et al., ICIAR 2011, LNCS 6754 (doi:10.1007/978-3-642-21593-3_4)",
       notes="30 simulated 3D stacks of human colon tissue in two noise levels: each zip unpacks as "
             "image-final_NNNN.h5 with its labels in image-labels_NNNN.h5 (HDF5 dataset 'Image', "
             "z, y, x); the labels are a foreground mask, split into connected components (one "
             "instance of 'cell' each), written once as NIfTI beside the manifest. The stacks carry "
             "no voxel size (1 unless -O spacing=[x,y,z]); the stack number is the case, so the two "
             "noise renderings of a phantom share a split.",
       uncertain=("licence", "classes"),
       verified_from=("torch_em (constantinpape/torch-em) datasets/light_microscopy/mucic.py: the "
                      "MUCIC collection's colon tissue, HL60 and granulocyte zips (datasets.gryf.fi."
                      "muni.cz iciar2011 / cytometry2009), files image-final_*.h5|.hdf5 and "
                      "image-labels_* (same suffix), key 'Image'; colon tissue labels semantic "
                      "(connected components for instances), HL60 and granulocytes instance ids; "
                      "3D; the DOIs of the publications",),
       doubts="whether the paper's 'MUCIC_Colon_Tissue' is this collection's colon tissue set "
              "(name and 'cell' prompt agree; its slicing is not public); whether touching cells "
              "share one component (torch_em splits them the same way); the voxel size; the "
              "licence is not stated by the sources read"),
    _d("hl60-granulocytes", "MUCIC HL60 and granulocyte nuclei (CBIA simulated 3D fluorescence)", "train",
       "fluorescence microscopy (simulated)", "OTHER", 3, ["cell"], "mucic",
       source="https://cbia.fi.muni.cz/datasets/ (HL60_{Low,High}Noise_C{00,25,50,75}_3D_HDF5.zip, "
              "Granulocytes_{Low,High}Noise_3D_HDF5.zip)",
       citation="Svoboda D., Kozubek M., Stejskal S., Cytometry A 75A(6) (2009) "
                "(doi:10.1002/cyto.a.20811)",
       notes="Simulated 3D stacks of HL60 nuclei (four clustering levels, two noise levels) and "
             "granulocyte nuclei (two noise levels): image-final_NNNN.h5 + image-labels_NNNN.h5 "
             "(HDF5 'Image', z, y, x), labels nucleus instance ids, each pair written once as "
             "NIfTI; unpack the zips into one folder each (the folder names the variant in the key). "
             "No voxel size in the files (1 unless -O spacing=[x,y,z]); the stack number is the "
             "case, so a phantom's renderings share a split.",
       uncertain=("licence",),
       verified_from=("torch_em (constantinpape/torch-em) datasets/light_microscopy/mucic.py: "
                      "HL60 (low|high noise x C00|C25|C50|C75) and granulocyte (low|high) zips of "
                      "image-final_*.h5 + image-labels_*.h5, key 'Image', instance labels, 3D",),
       doubts="the paper names the set 'MUCI_HL60 / MUCI_Granulocytes' and prompts 'cell' (the "
              "labels are nuclei); which variants it used and how it sliced them is not public; "
              "the voxel size; the licence is not stated by the sources read"),
    _d("monuseg", "MoNuSeg (Multi-Organ Nucleus Segmentation)", "train", "histopathology (H&E)", "RGB", 2,
       ["cell nucleus"], "monuseg",
       licence="CC BY-NC-SA 4.0", source="https://monuseg.grand-challenge.org/",
       citation="Kumar N. et al., A Dataset and a Technique for Generalized Nuclear Segmentation for "
                "Computational Pathology, IEEE TMI 36(7):1550-1560 (2017)",
       notes="1000x1000 TIFF tiles ('Tissue Images/X.tif') with nucleus outlines in Aperio XML "
             "('Annotations/X.xml'; the test set keeps both in one folder): each region is rasterised "
             "as one instance of 'cell nucleus'.",
       uncertain=("licence",)),
    _d("nucmm-z", "NucMM-Z (zebrafish EM nuclei)", "train", "electron microscopy", "OTHER", 3,
       ["cell nucleus"], "nucmm", source="https://connectomics-bazaar.github.io/proj/nucMM/index.html",
       citation="Lin Z. et al., NucMM Dataset: 3D Neuronal Nuclei Instance Segmentation at "
                "Sub-Cubic Millimeter Scale, MICCAI 2021, LNCS 12901, pp. 164-174",
       notes="Download (Google Drive folder of the NucMM page, sometimes unpacked under "
             "NucMM-Release/) holds 'Zebrafish (NucMM-Z)/Image/{train,val}/img_ZZZZ_YYYY_XXXX.h5' "
             "with 'Label/{train,val}/seg_ZZZZ_YYYY_XXXX.h5' (same suffix), each an HDF5 file whose "
             "dataset 'main' is the (z, y, x) block; labels are nucleus instance ids. Each pair is "
             "written once as NIfTI beside the manifest and listed as instances of 'cell nucleus'; "
             "the release's train / val split is kept; the mouse micro-CT blocks beside them "
             "('Mouse (NucMM-M)') are not read. The files carry no voxel size: every voxel "
             "is 1 unless -O spacing=[x,y,z] (mm) is given.",
       uncertain=("licence",),
       verified_from=("torch_em (constantinpape/torch-em) datasets/nuc_mm.py: 'Zebrafish (NucMM-Z)'/"
                      "Image|Label/train|val/*.h5 (older versions under 'NucMM-Release/'), key 'main', "
                      "image and label shapes equal",
                      "a public NucMM preprocessing script: the full file tree (img_0000_0576_0768.h5 "
                      "<-> seg_0000_0576_0768.h5; 'seg_' + image name[4:])",
                      "PytorchConnectomics/pytorch_connectomics configs/NucMM/README.md (the authors' "
                      "code): project page, challenge page nucmm.grand-challenge.org, MICCAI 2021 "
                      "citation; tutorials/nuc_nucmm-z.yaml reads Image/train/img_*.h5 + "
                      "Label/train/seg_*.h5 at resolution [1, 1, 1]"),
       doubts="the voxel size: the paper states it, but no stored copy of its dataset section was "
              "reached and the authors' configs train at resolution 1 (so spacing is 1 per voxel "
              "unless given); the licence is not stated on the pages read"),
    _d("papila", "PAPILA", "train", "fundus photography", "RGB", 2, ["optic disc", "optic cup"], "papila",
       [{"expert": 1}],
       licence="CC BY 4.0", source="https://doi.org/10.6084/m9.figshare.14798004",
       citation="Kovalyk O. et al., PAPILA: Dataset with fundus images and clinical data of both eyes "
                "of the same patient for glaucoma assessment, Scientific Data 9:291 (2022)",
       notes="488 images (both eyes of 244 patients) unpacked as PapilaDB-PAPILA-<commit>/FundusImages/"
             "RETnnnOD.jpg | RETnnnOS.jpg with ExpertsSegmentations/Contours/RETnnnOD_disc_exp1.txt, "
             "_cup_exp1.txt, _disc_exp2.txt, _cup_exp2.txt: one 'x y' point per line, a closed "
             "outline. Expert 1's outlines are filled into a label map (1 disc outside the cup, "
             "2 cup; 'optic disc' = 1 + 2); expert=2 reads the other expert; a patient's two eyes "
             "share a split.",
       paper_dice=(86.2, 99.4), uncertain=("licence", "source"),
       verified_from=("public PAPILA loaders: a folder listing of the download (ClinicalData/, "
                      "ExpertsSegmentations/Contours/RET002OD_cup_exp1.txt ... _disc_exp2.txt, "
                      "ImagesWithContours/, FundusImages/RET002OD.jpg); loaders reading "
                      "'PapilaDB-PAPILA-17f8fa77.../ExpertsSegmentations/Contours/<image>_cup_exp1.txt' "
                      "and parsing each line as 'x y' floats filled with cv2.fillPoly",
                      "Kovalyk O. et al., Scientific Data 9:291 (2022)"),
       doubts="which expert the paper's masks used (expert 1 here); one public loader expects a "
              "'_cup_e_exp2.txt' name for some expert-2 cup files: such near names are accepted"),
    _d("pcmmd", "PCMMD (Plasma Cells for Multiple Myeloma Diagnosis)", "train",
       "bright-field microscopy (Wright-Giemsa bone marrow smears)", "RGB", 2, ["cell"], "labelme",
       [{"images_dir": "images", "annotations_dir": "masks", "class_name": "cell"}],
       licence="CC BY 4.0", source="https://doi.org/10.17632/3v2nrxpr9s.1",
       citation="PCMMD: plasma cells for multiple myeloma diagnosis, Scientific Data (2025), "
                "doi:10.1038/s41597-025-04459-1",
       notes="Mendeley archive 'PCMMD Plasma Cells for Multiple Myeloma Diagnosis/data/': the "
             "segmentation subset holds single-cell crops in 'plasma cells/' (1,613) and 'non-plasma "
             "cells/' (1,927), each images/*.jpg with one LabelMe-style JSON per crop in masks/ "
             "(imageHeight, imageWidth, shapes with 'points' and label plasma_cell | "
             "non_plasma_cell); every polygon is read as 'cell' (the public run's prompt). The "
             "detection subset (boxes) is not read. Prompted 'cell' in the public run, where its "
             "per-image results equal MMDB's image for image: train on one of the two only.",
       uncertain=("citation",),
       verified_from=("torch_em (constantinpape/torch-em) datasets/medical/pcmmd.py: Mendeley "
                      "3v2nrxpr9s (CC BY 4.0), archive folder and data/segmentation/{plasma cells,"
                      "non-plasma cells}/images/*.jpg + masks/*.json, polygons of 'shapes' rasterised "
                      "with imageHeight/imageWidth, labels plasma_cell / non_plasma_cell",),
       doubts="the two cell types are one class here as the paper prompts them; the crops have no "
              "patient id, so the split is per crop (hash)"),
    _d("pannuke", "PanNuke", "train", "histopathology (H&E)", "RGB", 2,
       ["neoplastic cell nucleus", "inflammatory cell nucleus", "connective tissue cell nucleus",
        "dead cell nucleus", "epithelial cell nucleus"], "pannuke",
       licence="CC BY-NC-SA 4.0", source="https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke",
       citation="Gamper J. et al., PanNuke: An Open Pan-Cancer Histology Dataset for Nuclei Instance "
                "Segmentation and Classification, ECDP 2019",
       notes="7,904 256x256 patches in three folds: Fold N/images/foldN/images.npy and Fold N/masks/"
             "foldN/masks.npy (6 channels of instance ids: neoplastic, inflammatory, connective/soft "
             "tissue, dead, epithelial, background), written as PNG patches + class label maps; "
             "folds 1/2/3 -> train/val/test."),
    _d("polypgen", "PolypGen", "train", "colonoscopy", "RGB", 2, ["polyp"], "folder2d",
       [{"class_name": "polyp", "mask_suffix": "_mask"}],
       licence="CC BY 4.0", source="https://www.synapse.org/#!Synapse:syn26376615",
       citation="Ali S. et al., A multi-centre polyp detection and segmentation dataset for "
                "generalisability assessment, Scientific Data 10:75 (2023)",
       notes="1,537 frames from 6 centres: data_Cn/images_Cn + masks_Cn ('_mask.jpg').",
       uncertain=("licence", "source")),
    _d("ravir", "RAVIR (Retinal Arteries and Veins in Infrared Reflectance)", "train",
       "infrared reflectance retina (SLO)", "OTHER", 2, ["retinal artery", "retinal vein"], "folder2d",
       [{"images_dir": "training_images", "masks_dir": "training_masks",
         "labels": {"128": "retinal artery", "255": "retinal vein"}}],
       licence="CC BY-NC-SA 4.0", source="https://ravir.grand-challenge.org/",
       citation="Hatamizadeh A. et al., RAVIR: A Dataset and Methodology for the Semantic Segmentation "
                "and Quantitative Analysis of Retinal Arteries and Veins in Infrared Reflectance "
                "Imaging, IEEE JBHI 26(7) (2022)",
       notes="768 x 768 infrared SLO images IR_Case_NNN.png (12.5 um pixels) with grey-value masks "
             "of the same name: artery 128, vein 255 (the challenge page names 256 for veins, which an "
             "8-bit PNG cannot hold); 'RAVIR Dataset/train/training_images/' + "
             "'train/training_masks/' (the test/ images have no masks).",
       verified_from=("torch_em (constantinpape/torch-em) datasets/medical/ravir.py: the zip unpacks "
                      "as 'RAVIR Dataset/', images train/training_images/*, masks "
                      "train/training_masks/*",
                      "TheoPis/MIM_OCT datasets/RAVIR.py: mask = training_masks/<image's stem>.png "
                      "(same stem asserted), grey values remapped 128 -> artery, 255 -> vein",),
       doubts="a mask value other than 0, 128 and 255 is read as background"),
    _d("segthy", "SegThy (thyroid 3D ultrasound and MRI)", "train", "thyroid ultrasound", "US", 3,
       ["thyroid gland", "carotid artery", "jugular vein"], "segthy",
       source="https://www.cs.cit.tum.de/camp/publications/segthy-dataset/ (US_data.zip)",
       citation="Kronke M. et al., Tracked 3D ultrasound and deep neural network-based thyroid "
                "segmentation reduce interobserver variability in thyroid volumetry, PLoS One "
                "17(7):e0268550 (2022)",
       notes="US_data.zip unpacks as US_volunteer_dataset/ground_truth_data/US/<sweep>_US.nii (tracked "
             "freehand 3D sweeps, e.g. 005_P1_1_left_US.nii) with US_thyroid_label/<sweep>.nii label "
             "maps: 1 thyroid, 2 and 4 carotid arteries, 3 and 5 jugular veins (the two sides); read "
             "in place, a volunteer's sweeps share a split. The MRI archive is not read.",
       paper_dice=(57.3, 78.5), uncertain=("licence",),
       verified_from=("torch_em (constantinpape/torch-em) datasets/medical/segthy.py: US_data.zip from "
                      "campar.in.tum.de/public_datasets/2022_plosone_eilers -> US_volunteer_dataset/"
                      "ground_truth_data/US/*.nii + US_thyroid_label/*.nii",
                      "public SegThy converters: image '{id}_US.nii', label '{id}.nii' ('_US' removed "
                      "to match), regexes (?P<id>\\d{3})_(?P<p>P\\d+)_(?P<num>\\d+)_(left|right)"
                      "(_US).nii; labels 1 thyroid, 2 CCA, 3 IJV, 4 CCA, 5 IJV (left/right per side); "
                      "'the complete neck area has been annotated ... thyroid labelled 1'"),
       doubts="which side 2/3 and 4/5 are (the sources disagree; both sides are one class here); "
              "torch_em's docstring says the US labels hold the thyroid only, three other loaders "
              "read vessels from them too; the volunteer grouping assumes the first number names the "
              "volunteer"),
    _d("us-nerve", "Ultrasound Nerve Segmentation (brachial plexus)", "train", "ultrasound", "US", 2,
       ["brachial plexus nerve"], "folder2d", [{"class_name": "brachial plexus nerve"}],
       licence="Kaggle competition rules",
       source="https://www.kaggle.com/competitions/ultrasound-nerve-segmentation",
       citation="Ultrasound Nerve Segmentation (Kaggle, 2016)",
       notes="5,635 training TIFFs with 'X_mask.tif' beside them; ~60 % of the masks are empty."),
    _d("urocell", "UroCell", "train", "FIB-SEM electron microscopy", "OTHER", 3,
       ["mitochondrion", "endolysosome", "fusiform vesicle"], "urocell",
       licence="CC BY-NC-SA 4.0", source="https://github.com/MancaZerovnikMekuc/UroCell",
       citation="Zerovnik Mekuc M. et al., Automatic segmentation of mitochondria and endolysosomes "
                "in volumetric electron microscopy data, Computers in Biology and Medicine "
                "119:103693 (2020)",
       notes="256^3 FIB-SEM sub-volumes (data/<case>.nii.gz, ~16 x 16 x 15 nm voxels) with one binary "
             "mask file per class and case (mito/, lyso/, fv/ with binary/<case>.nii.gz); each mask is "
             "one item, so a class not annotated in a case is not taken as absent. Golgi (approximate "
             "outlines) is not read.",
       verified_from=("github.com/MancaZerovnikMekuc/UroCell: README.md and its file tree",)),
    _d("m2caiseg", "m2caiSeg", "train", "laparoscopic surgery", "RGB", 2,
       ["grasper", "bipolar forceps", "electrocautery hook", "scissors", "clipper", "irrigator",
        "specimen bag", "trocar", "clip", "liver", "gallbladder", "fat", "abdominal wall", "cystic artery",
        "intestine", "bile", "blood"], "folder2d",
       [{"images_dir": part + "/images", "masks_dir": part + "/groundtruth", "colors": M2CAISEG_COLOURS,
         "ignore_colors": [170, 0, 85]} for part in ("trainval", "test")],
       source="https://www.kaggle.com/datasets/salmanmaq/m2caiseg",
       citation="Maqbool S. et al., m2caiSeg: Semantic Segmentation of Laparoscopic Images using "
                "Convolutional Neural Networks, arXiv:2008.10134 (2020)",
       notes="307 frames of MICCAI 2016 tool-detection videos 1-2 unpacked as 'm2caiSeg dataset/' with "
             "train/, trainval/ (train + val) and test/, each images/*.jpg + groundtruth/ RGB masks: "
             "black out of frame, 17 class colours (grasper 0,85,170; bipolar 0,85,255; hook "
             "0,170,255; scissors 0,255,85; clipper 0,255,170; irrigator 85,0,170; specimen bag "
             "85,0,255; trocars 170,85,85; clip 170,170,170; liver 85,170,0; gallbladder 85,170,255; "
             "fat 85,255,0; upper wall 85,255,170; artery (the cystic artery here) 170,0,255; intestine 255,0,255; bile "
             "255,255,0; blood 255,0,0) and 'unknown' 170,0,85, read as ignored pixels. trainval/ "
             "(split by hash: train, or val with --val-fraction) and test/ are read; train/ repeats "
             "part of trainval/ and is skipped.", paper_dice=(67.7, 88.1),
       uncertain=("licence",),
       verified_from=("torch_em (constantinpape/torch-em) datasets/medical/m2caiseg.py: Kaggle "
                      "salmanmaq/m2caiseg unpacks as 'm2caiSeg dataset'; {train,trainval,test}/images/"
                      "*.jpg + groundtruth/*.png; val = trainval minus train; LABEL_MAPS (RGB -> class "
                      "for the 19 colours above)",
                      "the authors' loader (miccaiSegDataset: images/ + groundtruth/, mask named "
                      "<image>_gt.jpg in an earlier release)"),
       doubts="whether the Kaggle masks are named like their images or '<image>_gt' (both are read); "
              "the val subset of trainval is not the official one (hash split)"),
    _d("ps-fh-aop-2023", "PS-FH-AOP 2023 (pubic symphysis and fetal head)", "train",
       "intrapartum transperineal ultrasound", "US", 2, ["pubic symphysis", "fetal head"], "psfh",
       source="https://zenodo.org/records/7851339 (challenge training set); "
              "https://zenodo.org/records/10969427 (PSFHS release)",
       citation="MICCAI 2023 PS-FH-AOP challenge, built on JNU-IFM (Lu Y. et al., The JNU-IFM dataset "
                "for segmenting pubic symphysis-fetal head, Data in Brief 41:107904 (2022))",
       notes="image_mha/NNNNN.mha (256 x 256 x 3: the grey frame stored three times along a third "
             "axis) with label_mha/NNNNN.mha (256 x 256; 0 background, 1 pubic symphysis, 2 fetal "
             "head), under 'Pubic Symphysis-Fetal Head Segmentation and Angle of Progression/' "
             "(challenge training set, 4,000 frames) or 'PSFHS/' (zenodo 10969427); frames and "
             "labels are written as PNG.", paper_dice=(65.7, 91.6),
       uncertain=("licence", "source"),
       verified_from=("github.com/lanesra10/FH-PS-AOP-grandchallenge: README.md (images 3 x 256 x 256, "
                      "ground truth 256 x 256 with 0 background, 1 pubic symphysis, 2 fetal head)",
                      "torch_em (constantinpape/torch-em) datasets/medical/psfhs.py and jnuifm.py: "
                      "PSFHS.zip -> PSFHS/image_mha/*.mha + label_mha/*.mha; 7851339 zip -> 'Pubic "
                      "Symphysis-Fetal Head Segmentation and Angle of Progression'",
                      "a public FH-PS-AOP adapter: image MHA DimSize 256 256 3, the three planes "
                      "identical; label DimSize 256 256, values {0, 1, 2}; opaque 5-digit names"),
       doubts="which of the two releases the paper trained on (the run names it ps-fh-aop-2023)"),
    # ------------------------------------------------------------------ 7 external test sets
    _d("tn3k", "TN3K (thyroid nodules)", "external", "thyroid ultrasound", "US", 2, ["thyroid nodule"],
       "folder2d", [{"class_name": "thyroid nodule"}],
       source="https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
       citation="Gong H. et al., Thyroid region prior guided attention for ultrasound segmentation "
                "of thyroid nodules, Computers in Biology and Medicine 155:106389 (2023)",
       notes="3,493 images: trainval-image/ + trainval-mask/, test-image/ + test-mask/.",
       paper_dice=(4.2, 40.8), uncertain=("licence",)),
    _d("hc18", "HC18 (fetal head circumference)", "external", "obstetric ultrasound", "US", 2,
       ["fetal head"], "hc18", licence="CC BY 4.0", source="https://zenodo.org/records/1327317",
       citation="van den Heuvel T.L.A. et al., Automated measurement of fetal head circumference "
                "using 2D ultrasound images, PLoS One 13(8):e0200412 (2018)",
       notes="1,334 images; '_Annotation.png' holds the head outline (an ellipse line): the converter "
             "fills it into the head's mask (the official evaluation loader reads the outline as is).",
       paper_dice=(23.9, 92.6)),
    _d("cvc-clinicdb", "CVC-ClinicDB", "external", "colonoscopy", "RGB", 2, ["polyp"], "folder2d",
       [{"images_dir": "Original", "masks_dir": "Ground Truth", "class_name": "polyp"}],
       licence="research use", source="https://polyp.grand-challenge.org/CVCClinicDB/",
       citation="Bernal J. et al., WM-DOVA maps for accurate polyp highlighting in colonoscopy, "
                "Computerized Medical Imaging and Graphics 43:99-111 (2015)",
       notes="612 frames; Original/ + Ground Truth/ (TIFF or PNG depending on the copy).",
       paper_dice=(0.0, 87.9), uncertain=("licence",)),
    _d("etis-laribpolypdb", "ETIS-LaribPolypDB", "external", "capsule endoscopy / colonoscopy", "RGB", 2,
       ["polyp"], "folder2d", [{"class_name": "polyp"}],
       source="https://polyp.grand-challenge.org/EtisLarib/",
       citation="Silva J. et al., Toward embedded detection of polyps in WCE images for early "
                "diagnosis of colorectal cancer, IJCARS 9(2):283-293 (2014)",
       notes="196 images with masks: images/N.png + masks/N.png, as the official evaluation loader "
             "reads them (the common redistribution).",
       paper_dice=(0.0, 86.1), uncertain=("licence", "source")),
    _d("ph2", "PH2", "external", "dermoscopy", "RGB", 2, ["skin lesion"], "pictures",
       [{"class_name": "skin lesion", "mask_marker": "_lesion"}],
       source="https://www.fc.up.pt/addi/ph2%20database.html",
       citation="Mendonca T. et al., PH2 - A dermoscopic image database for research and "
                "benchmarking, EMBC 2013",
       notes="200 cases 'PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp' with "
             "'IMDxxx_lesion/IMDxxx_lesion.bmp' masks (both written as PNG).", paper_dice=(18.4, 92.7),
       uncertain=("licence", "source")),
    _d("chase-db1", "CHASE_DB1", "external", "fundus photography", "RGB", 2, ["retinal blood vessel"],
       "folder2d", [{"mask_suffix": "_1stHO", "class_name": "retinal blood vessel", "unpaired": "skip"}],
       licence="CC BY 4.0", source="https://blogs.kingston.ac.uk/retinal/chasedb1/",
       citation="Fraz M.M. et al., An ensemble classification-based approach applied to retinal "
                "blood vessel segmentation, IEEE TBME 59(9):2538-2548 (2012)",
       notes="28 images 'Image_01L.jpg' with first-observer masks 'Image_01L_1stHO.png' (the "
             "second observer's '_2ndHO.png' are skipped).", paper_dice=(17.9, 62.6),
       uncertain=("licence",)),
    _d("stare", "STARE", "external", "fundus photography", "RGB", 2, ["retinal blood vessel"], "pictures",
       [{"class_name": "retinal blood vessel", "mask_marker": ".ah"}],
       source="https://cecas.clemson.edu/~ahoover/stare/",
       citation="Hoover A. et al., Locating blood vessels in retinal images by piecewise threshold "
                "probing of a matched filter response, IEEE TMI 19(3):203-210 (2000)",
       notes="20 PPM images (gzipped) with two observers' vessel masks, 'imXXXX.ah.ppm' (Hoover, the "
             "one the official evaluation uses, read here) and 'imXXXX.vk.ppm', written as PNG.",
       paper_dice=(18.6, 54.4), uncertain=("licence",)),
    # ------------------------------------------------------------------ extras
    _d("cvpr2025-biomedsegfm", "CVPR 2025 BiomedSegFM (text-guided 3D segmentation)", "extra",
       "CT, MR, PET, ultrasound, microscopy volumes", None, 3, ["~85 classes named by text prompts"],
       "npz", [{}], source="https://huggingface.co/datasets/junma/CVPR-BiomedSegFM",
       citation="CVPR 2025 challenge 'Foundation Models for Text-guided 3D Biomedical Image Segmentation'",
       notes="<Modality>/<Dataset>/<case>.npz with imgs, gts, spacing, text_prompts; the later 3D "
             "Medical SAM3 checkpoint was trained on it (one COCO-video JSON per group, "
             "train_all_<Modality>_<Group>_sam3_video.json). Its evaluation prompts each volume with "
             "the sentence stored in the npz ('Liver tumors detected in abdominal CT imaging') and "
             "maps it to the longest of 82 short training names it contains (Liver tumors, Left "
             "kidney, Aorta, ...): those names are the 'medical-sam3' vocabulary's 3D prompts.",
       uncertain=("licence", "classes"),
       verified_from=("github.com/AIM-Research-Lab/Medical-SAM3 @57c2d35: medical/evaluation/eval_common.py "
                      "(_TRAIN_QUERY_VOCAB, val_text_to_train_query), sam3/train/configs/"
                      "medsam3_stage1_train_all_unified.yaml (ann_file per group), experiments/"
                      "medsam3_stage1_train_all_unified/val_results_text_ckpt5/results_per_volume.csv "
                      "(query_text per volume) and val_results_ckpt5/results_per_group.csv (44 groups)",),
       doubts="the class list per group is the npz files' own (text_prompts); 'classes' stays a "
              "summary"),
    _d("colin27-aal", "Colin27 T1 + AAL atlas (MRIcron templates)", "extra", "brain MRI (T1)", "MR", 3,
       ["116 AAL regions (left/right gyri, nuclei, cerebellum, vermis)", "brain"], "atlas",
       [{"image": "ch2.nii.gz", "label": "aal.nii.gz", "names": "aal.nii.txt", "mask": "ch2bet.nii.gz",
         "mask_class": "brain", "mask_threshold": 0, "modality": "MR"}],
       licence="MRIcron templates: BSD-3-clause (Debian package mricron-data); cite Colin27 and AAL",
       source="Debian/Ubuntu package mricron-data (apt-get install mricron-data)",
       citation="Holmes C.J. et al., J Comput Assist Tomogr 22(2):324-333 (1998); Tzourio-Mazoyer N. "
                "et al., NeuroImage 15(1):273-289 (2002)",
       notes="181x217x181 1 mm MNI grid; ch2bet.nii.gz > 0 gives the brain mask.",
       default_root="/usr/share/mricron/templates"),
)

# ------------------------------------------------------------------ the paper's public run
#: Where the prompts below were read: the per-image text-prompt evaluation of the public
#: Medical SAM3 run (33 training sets, 50 held-out images each; ``query_text`` is the prompt),
#: and the official evaluation loaders of the 7 external sets.
PAPER_RUN_SOURCE = ("github.com/AIM-Research-Lab/Medical-SAM3 @57c2d35: experiments/"
                    "medsam3_stage1_train_all_unified/2d_eval_text_ckpt5/results_per_sample.csv")
PAPER_LOADERS_SOURCE = "github.com/AIM-Research-Lab/Medical-SAM3: inference/dataset_loaders.py (DATASET_PROMPTS)"

#: registry name -> (name in the public run, {class: prompt}). A class missing from a
#: multi-class entry had no prompt in that evaluation (it shows one prompt per image).
_PAPER_RUN: dict[str, tuple[str, dict[str, str]]] = {
    "arcade": ("ARCADE", {"coronary artery": "coronary artery segment"}),
    "bkai-igh-neopolyp": ("BKAI-IGH NeoPolyp", {"neoplastic polyp": "Polyp", "non-neoplastic polyp": "Polyp"}),
    "btxrd": ("BTXRD", {"bone tumor": "Bone Tumor"}),
    "bus-uclm": ("BUS-UCLM", {"breast tumor": "Breast Ultrasound Lesion"}),
    "busi": ("BUSI", {"breast tumor": "Breast Ultrasound Lesion"}),
    "breast-cancer-segmentation": ("Breast_Cancer_Segmentation", {"breast cancer tissue": "Breast Cancer Tissue"}),
    "covid-qu-ex": ("COVID-QU-Ex", {"lungs": "Lung"}),
    "coph100": ("COph100", {"optic disc": "Optic Disc"}),
    "ct2us-kidney": ("CT2USforKidneySeg", {"kidney": "Kidney"}),
    "chest-xray-pneumothorax": ("Chest_X-Ray_Pneumothorax", {"pneumothorax": "Pneumothorax"}),
    "chest-xray-masks-and-labels": ("Chest_Xray_Masks_and_Labels", {"lungs": "Lung"}),
    "cholecseg8k": ("CholecSeg8k", {"liver": "liver"}),
    "drive": ("DRIVE", {"retinal blood vessel": "Retinal Blood Vessel"}),
    "fetoplac": ("FetoPlac", {"placental vessel": "Placental Vessel"}),
    "glas": ("GlaS@MICCAI'2015", {"gland": "Gland"}),
    "isic-2018": ("ISIC_2018", {"skin lesion": "Skin Lesion"}),
    "intraretinal-cystoid-fluid": ("Intraretinal_Cystoid_Fluid",
                                   {"intraretinal cystoid fluid": "Cystoid Macular Edema"}),
    "kvasir-seg": ("Kvasir-SEG", {"polyp": "Polyp"}),
    "mmdb": ("MMDB", {"cell": "Cell"}),
    "mucic-colon-tissue": ("MUCIC_Colon_Tissue", {"cell": "cell"}),
    "hl60-granulocytes": ("MUCI_HL60 / MUCI_Granulocytes", {"cell": "cell"}),
    "monuseg": ("MonuSeg", {"cell nucleus": "cell nucleus"}),
    "nucmm-z": ("NucMM-Z", {"cell nucleus": "cell nucleus"}),
    "papila": ("PAPILA", {"optic disc": "optic disc and cup", "optic cup": "optic disc and cup"}),
    "pcmmd": ("PCMMD", {"cell": "cell"}),
    "pannuke": ("PanNuke", {c: "cell" for c in ("neoplastic cell nucleus", "inflammatory cell nucleus",
                                               "connective tissue cell nucleus", "dead cell nucleus",
                                               "epithelial cell nucleus")}),
    "polypgen": ("PolypGen", {"polyp": "polyp"}),
    "ravir": ("RAVIR Dataset", {"retinal artery": "retinal artery and vein",
                                "retinal vein": "retinal artery and vein"}),
    "segthy": ("SegThy", {"thyroid gland": "thyroid nodule"}),
    "us-nerve": ("US-Nerve", {"brachial plexus nerve": "nerve"}),
    "urocell": ("UroCell", {c: "cell organelle" for c in ("mitochondrion", "endolysosome", "fusiform vesicle")}),
    "m2caiseg": ("m2caiSeg", {}),
    "ps-fh-aop-2023": ("ps-fh-aop-2023", {"fetal head": "fetal head"}),
    # external sets: the official evaluation loaders
    "tn3k": ("TN3K", {"thyroid nodule": "thyroid nodule"}),
    "hc18": ("HC18", {"fetal head": "fetal head"}),
    "cvc-clinicdb": ("CVC-ClinicDB", {"polyp": "Polyp"}),
    "etis-laribpolypdb": ("ETIS-Larib", {"polyp": "Polyp"}),
    "ph2": ("PH2", {"skin lesion": "Skin Lesion"}),
    "chase-db1": ("CHASE_DB1", {"retinal blood vessel": "Retinal Blood Vessel"}),
    "stare": ("STARE", {"retinal blood vessel": "Retinal Blood Vessel"}),
}

#: What the public run leaves open, per entry (shown by ``data list -v``).
_PAPER_DOUBTS: dict[str, str] = {
    "arcade": "the stenosis task's prompt (the run shows 'coronary artery segment' only)",
    "covid-qu-ex": "the infection masks' prompt (the run shows 'Lung' only)",
    "cholecseg8k": "the prompts of the 11 other classes (the run shows 'liver' only)",
    "m2caiseg": "the prompts: the run shows 'Tissue' for every image, the class table is not public",
    "ps-fh-aop-2023": "the pubic symphysis prompt (the run shows 'fetal head' only)",
    "segthy": "the run prompts 'thyroid nodule' for SegThy's thyroid label; which label it used is not public",
    "papila": "the run segments disc and cup as one target, 'optic disc and cup'",
    "ravir": "the run segments artery and vein as one target, 'retinal artery and vein'",
    "pannuke": "the run prompts every nucleus type as 'cell'",
    "urocell": "the run prompts every organelle as 'cell organelle'",
    "bkai-igh-neopolyp": "the run prompts both polyp kinds as 'Polyp'",
}


def _with_paper_run(info: DatasetInfo) -> DatasetInfo:
    import dataclasses

    if info.name not in _PAPER_RUN:
        return info
    paper_name, prompts = _PAPER_RUN[info.name]
    unknown = sorted(set(prompts) - set(info.classes))
    if unknown:  # a prompt for a class the entry does not list would never apply
        raise ValueError(f"registry entry {info.name}: prompts for unlisted classes {unknown}")
    source = PAPER_LOADERS_SOURCE if info.role == "external" else PAPER_RUN_SOURCE
    doubts = "; ".join(d for d in (info.doubts, _PAPER_DOUBTS.get(info.name, "")) if d)
    uncertain = info.uncertain + (("prompts",) if info.name in _PAPER_DOUBTS else ())
    return dataclasses.replace(info, paper_name=paper_name, prompts=tuple(prompts.items()),
                               verified_from=info.verified_from + (source,), doubts=doubts,
                               uncertain=uncertain)


REGISTRY_LIST = tuple(_with_paper_run(d) for d in REGISTRY_LIST)

REGISTRY: dict[str, DatasetInfo] = {d.name: d for d in REGISTRY_LIST}


def list_datasets(role: str | None = None) -> list[DatasetInfo]:
    """Registered datasets, optionally only one role (``train``, ``external``, ``extra``)."""
    if role is not None and role not in ROLES:
        raise ArgumentError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return [d for d in REGISTRY_LIST if role is None or d.role == role]


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry called ``name`` (case-insensitive; ``_`` and spaces read as ``-``)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key in REGISTRY:
        return REGISTRY[key]
    close = [k for k in REGISTRY if key in k or k in key]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ArgumentError(f"unknown dataset {name!r}{hint}; `medsam3 data list` shows the registry")


def prepare_dataset(name: str, root: str | os.PathLike | None, output: str | os.PathLike | None = None,
                    *, val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0,
                    check_geometry: bool = True, progress: bool = True):
    """Turn a downloaded copy of a registered dataset into a manifest (``data prepare``).

    Args:
        name: registry key (see :func:`list_datasets`).
        root: the unpacked download (default: the entry's system location, if any).
        output: the manifest to write (``.jsonl``); ``None`` only returns it.

    Raises:
        ArgumentError: unknown name, or a dataset whose download needs a step first
            (the message says which).
    """
    from medsam3.data.convert import apply_class_map, convert_items
    from medsam3.data.manifest import Manifest, write_manifest

    info = get_dataset(name)
    if info.layout is None:
        raise ArgumentError(f"{info.title} cannot be read as downloaded: {info.notes}")
    if root is None:
        if not info.default_root:
            raise ArgumentError(f"give the folder of your {info.title} download (--root DIR)")
        root = info.default_root
    root = Path(os.path.expanduser(str(root)))
    from medsam3.data.layouts.derived import CONVERTERS as DERIVED

    work_dir = None
    if info.layout in DERIVED:  # labels written as PNG (NucMM: NIfTI) beside the manifest
        if output is None:
            raise ArgumentError(f"{info.title}: its labels are written out (PNG or NIfTI) beside the manifest: "
                                "give the manifest to write (-o FILE.jsonl)")
        work_dir = str(Path(output).with_suffix("")) + "-files"
    items = []
    for conversion in info.conversions or ({},):
        options = dict(conversion)
        if work_dir:
            options.setdefault("work_dir", work_dir)
        subdir = options.pop("subdir", None)
        suffix = options.pop("id_suffix", None)
        class_map = options.pop("class_map", None)
        options.setdefault("modality", info.image_modality)
        part = convert_items(info.layout, root / subdir if subdir else root, progress=progress,
                             dataset=info.name, val_fraction=val_fraction, test_fraction=test_fraction,
                             seed=seed, check_geometry=check_geometry, **options)
        for item in part:
            if subdir:
                item.image = _under(subdir, item.image)
                item.label = _under(subdir, item.label)
            if suffix:
                item.id = f"{item.id}/{suffix}"
        if class_map:
            apply_class_map(part, class_map)
        items.extend(part)
    manifest = Manifest(items, root.resolve(), info.layout)
    if output is not None:
        manifest.path = write_manifest(items, output, root, info.layout)
    return manifest


def _under(subdir: str, path):
    """A path relative to ``subdir`` made relative to the dataset root (lists element-wise)."""
    if path is None or (isinstance(path, str) and Path(path).is_absolute()):
        return path
    if isinstance(path, list):
        return [_under(subdir, p) for p in path]
    return f"{Path(subdir).as_posix()}/{path}"


def registry_table() -> str:
    """The registry as a Markdown table (docs/datasets.md holds this text; a test keeps it current)."""
    rows = ["| name | role | dim | modality | converter | ready | paper prompts | unverified |",
            "|---|---|---|---|---|---|---|---|"]
    for d in REGISTRY_LIST:
        prompts = "; ".join(f"{c} → {p}" for c, p in d.prompts) or "–"
        rows.append(f"| {d.name} | {d.role} | {d.dim}D | {d.modality} | {d.layout or '–'} | "
                    f"{'yes' if d.ready else 'no'} | {prompts} | {', '.join(d.uncertain) or '–'} |")
    return "\n".join(rows)
