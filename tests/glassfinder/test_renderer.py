"""Renderer and camera model: determinism, geometry (lens centres on the eyes), temples hidden by
the head, lens transparency, and the camera's domain shift."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from glassfinder.camera import (
    GALLERY_CAMERA,
    QUERY_CAMERA,
    QUERY_CAMERA_AT_CROP,
    QUERY_SCENE_BLUR_AT_CROP,
    CameraConfig,
    apply_camera,
    with_blur_scaled,
)
from glassfinder.catalog_types import (
    BridgeStyle,
    Colourway,
    Family,
    FrameShape,
    LensType,
    Material,
    RimStyle,
    Sku,
)
from glassfinder.face_types import FaceSample, HeadPose
from glassfinder.renderer import (
    EXACT_FIT,
    FaceCropCache,
    estimate_pose,
    render_crop_batch,
    render_scene,
)
from glassfinder_runtime.geometry import DEFAULT_TEMPLATE, apply_affine, crop_matrix

# Lens centroid vs eye centre, in crop pixels (the "within 1 px at crop scale").
CENTRE_TOL_CROP_PX = 1.0
# Estimated yaw vs the yaw the keypoints were made with.
YAW_TOL_DEG = 6.0
ROLL_TOL_DEG = 3.0


def _sku(lens: LensType = LensType.CLEAR, opacity: float = 0.05, rim: float = 0.8, material: Material = Material.METAL,
         lens_rgb=(40, 40, 40)) -> Sku:
    """A round thin-rim frame whose lens centres sit exactly on a 63 mm interpupillary distance
    (45 mm lens + 18 mm bridge), so that its lens centroids must land on the pupils."""
    shape = FrameShape(
        family=Family.ROUND, lens_width_mm=45.0, lens_height_mm=45.0, bridge_width_mm=18.0, corner_radius=1.0,
        top_curve=0.0, bottom_curve=0.0, outer_lift=0.0, slant=0.0, facets=0, rim_style=RimStyle.FULL,
        rim_thickness_mm=rim, browline_thickness_mm=0.0, bridge_style=BridgeStyle.STRAIGHT, wrap_deg=0.0,
    )
    cw = Colourway(name="Test", material=material, primary_rgb=(30, 30, 30), secondary_rgb=(200, 200, 200),
                   gloss=0.5, lens=lens, lens_rgb=lens_rgb, lens_opacity=opacity)
    return Sku(sku_id="T-1", model_id="T", group_id="T-C1", display_name="Test", size="45-18-140", split="gallery",
               shape=shape, colourway=cw)


def _face(roll: float = 0.0, yaw: float = 0.0, size: int = 320) -> FaceSample:
    """A simple drawn face with textured eyes; keypoints follow the crop template's proportions, the
    far eye foreshortened by the yaw; the image and landmarks rotated by the roll."""
    img = Image.new("RGB", (size, size), (60, 80, 100))
    draw = ImageDraw.Draw(img)
    c = size / 2
    draw.ellipse([c - 0.38 * size, c - 0.46 * size, c + 0.38 * size, c + 0.5 * size], fill=(205, 160, 130))
    d = 0.24 * size  # eye-centre distance
    k = 11 / 46 * d  # half eye width (template: corners 11 px either side of a 46 px eye distance)
    cos = math.cos(math.radians(yaw))
    eyes = np.array([[c - d / 2 * cos, c], [c + d / 2 * cos, c]])
    rng = np.random.default_rng(1)
    for e in eyes:
        draw.ellipse([e[0] - k, e[1] - 0.5 * k, e[0] + k, e[1] + 0.5 * k], fill=(245, 245, 240))
        for _ in range(40):  # a speckled iris: texture that a clear lens must let through
            r = rng.uniform(0, 0.45 * k)
            t = rng.uniform(0, 2 * math.pi)
            p = e + r * np.array([math.cos(t), math.sin(t)])
            draw.point(tuple(p), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw.ellipse([e[0] - 0.15 * k, e[1] - 0.15 * k, e[0] + 0.15 * k, e[1] + 0.15 * k], fill=(5, 5, 5))
    kp = np.array([[eyes[0, 0] - k * cos, c], [eyes[0, 0] + k * cos, c], [eyes[1, 0] - k * cos, c],
                   [eyes[1, 0] + k * cos, c], [eyes[:, 0].mean(), c - 3 / 46 * d]])
    temples = np.array([[c - 0.37 * size, c], [c + 0.37 * size, c]])
    if roll:
        img = img.rotate(-roll, resample=Image.Resampling.BILINEAR, center=(c, c))
        t = math.radians(roll)
        R = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        kp, eyes, temples = ((p - c) @ R.T + c for p in (kp, eyes, temples))
    return FaceSample(image=img, keypoints=kp.astype(np.float32), eye_centres=eyes.astype(np.float32),
                      temples=temples.astype(np.float32),
                      face_box=np.array([c - 0.38 * size, c - 0.3 * size, c + 0.38 * size, c + 0.5 * size], np.float32),
                      pose=HeadPose(yaw=yaw, roll=roll), face_id=f"test-{roll}-{yaw}", split="test")


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    w = mask.sum()
    assert w > 10, "lens mask is empty"
    return np.array([(xs * mask).sum() / w + 0.5, (ys * mask).sum() / w + 0.5])


@pytest.fixture(scope="module")
def cache() -> FaceCropCache:
    return FaceCropCache([_face(), _face(roll=12.0), _face(yaw=25.0)])


def test_crop_batch_is_deterministic(cache):
    skus = [_sku(), None, _sku(LensType.TINTED, 0.85, rim=4.0, material=Material.ACETATE)]
    a = render_crop_batch(skus, cache, np.random.default_rng(7))
    b = render_crop_batch(skus, cache, np.random.default_rng(7))
    c = render_crop_batch(skus, cache, np.random.default_rng(8))
    assert a.shape == (3, DEFAULT_TEMPLATE.height, DEFAULT_TEMPLATE.width, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_scene_is_deterministic_with_camera():
    face = _face(roll=5.0)
    one = render_scene(_sku(), face, np.random.default_rng(3), camera=QUERY_CAMERA)
    two = render_scene(_sku(), face, np.random.default_rng(3), camera=QUERY_CAMERA)
    assert one.image.tobytes() == two.image.tobytes()
    assert np.array_equal(one.glasses_polygon, two.glasses_polygon)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("face_i", [0, 1])
def test_crop_lens_centres_land_on_the_eyes(cache, face_i, flip):
    """Frontal and rolled faces, plain and mirrored: in the crop, each lens centroid is on the
    crop-mapped pupil of its side."""
    out, masks = render_crop_batch([_sku()], cache, np.random.default_rng(0), fit=EXACT_FIT,
                                   face_index=[face_i], flip=flip, return_masks=True)
    face = [_face(), _face(roll=12.0)][face_i]
    eyes = apply_affine(crop_matrix(face.keypoints), face.eye_centres)
    if flip:  # mirrored crop: the subject's right eye is the mirror of the left one
        eyes = np.stack([DEFAULT_TEMPLATE.width - eyes[:, 0], eyes[:, 1]], 1)[::-1]
    m = masks[0]
    for mask, eye in ((m.lens_right, eyes[0]), (m.lens_left, eyes[1])):
        assert np.linalg.norm(_centroid(mask) - eye) < CENTRE_TOL_CROP_PX
    assert out[0].tobytes() != cache.crops[face_i][:, ::-1 if flip else 1].tobytes()


def test_scene_lens_centres_on_a_rolled_face():
    face = _face(roll=-20.0)
    scene = render_scene(_sku(), face, np.random.default_rng(0), fit=EXACT_FIT, return_masks=True)
    crop_scale = math.sqrt(abs(np.linalg.det(crop_matrix(face.keypoints)[:, :2])))
    for mask, eye in ((scene.masks.lens_right, face.eye_centres[0]), (scene.masks.lens_left, face.eye_centres[1])):
        assert np.linalg.norm(_centroid(mask) - eye) * crop_scale < CENTRE_TOL_CROP_PX
    # The ground-truth polygon encloses both lenses and stays inside the image.
    poly = scene.glasses_polygon
    assert poly.shape[0] >= 4 and poly.shape[1] == 2
    assert poly[:, 0].min() < face.eye_centres[:, 0].min() and poly[:, 0].max() > face.eye_centres[:, 0].max()
    assert poly.min() >= 0 and poly.max() <= face.image.width
    assert scene.sku_id == "T-1"


def test_bare_face_scene_has_no_glasses():
    face = _face()
    scene = render_scene(None, face, np.random.default_rng(0))
    assert scene.sku_id is None and scene.glasses_polygon.shape == (0, 2)
    assert scene.image.tobytes() == face.image.tobytes()


def test_far_temple_hidden_behind_the_head():
    """Yaw > 0 turns the face to image right: the subject's left side (image right) turns away and
    its temple disappears; facing the camera both temples show."""
    for yaw, far_visible in ((0.0, True), (40.0, False), (-40.0, False)):
        face = _face(yaw=yaw)
        scene = render_scene(_sku(rim=3.0, material=Material.ACETATE), face, np.random.default_rng(0),
                             fit=EXACT_FIT, return_masks=True)
        t = scene.masks.temples
        mid = int(face.keypoints[4, 0])
        right_side, left_side = t[:, :mid].sum(), t[:, mid:].sum()  # subject's right = image left
        near, far = (right_side, left_side) if yaw >= 0 else (left_side, right_side)
        assert near > 5
        assert (far > 5) == far_visible


def test_clear_lens_shows_the_eye_and_sunglasses_hide_it():
    face = _face()
    bare = np.asarray(face.image, np.float32)
    clear = render_scene(_sku(LensType.CLEAR, 0.05), face, np.random.default_rng(0), fit=EXACT_FIT, return_masks=True)
    sun = render_scene(_sku(LensType.TINTED, 0.9), face, np.random.default_rng(0), fit=EXACT_FIT, return_masks=True)
    eye = face.eye_centres[0].astype(int)
    k = int(0.24 * face.image.width * 11 / 46 * 0.8)
    box = (slice(eye[1] - k // 2, eye[1] + k // 2), slice(eye[0] - k, eye[0] + k))
    assert clear.masks.lens_right[box].min() > 0.99  # the box is inside the lens
    std_bare = bare[box].std()
    std_clear = np.asarray(clear.image, np.float32)[box].std()
    assert std_clear > 0.75 * std_bare
    mean_sun = np.asarray(sun.image, np.float32)[box].mean()
    assert mean_sun < 0.5 * bare[box].mean()


def test_estimate_pose_recovers_yaw_and_roll():
    """On procedural faces (exact 3D ground truth) the pose from the five keypoints alone is close."""
    from glassfinder.faces import make_face

    yaws = []
    for i in range(8):
        face = make_face(i, split="val", size=160)
        pose = estimate_pose(face.keypoints)
        assert abs(pose.roll - face.pose.roll) < ROLL_TOL_DEG
        assert abs(pose.yaw - face.pose.yaw) < YAW_TOL_DEG
        yaws.append(face.pose.yaw)
    assert max(np.abs(yaws)) > 10  # the sample really has turned heads


def test_camera_changes_the_image_but_keeps_its_shape(cache):
    batch = render_crop_batch([_sku()] * 4, cache, np.random.default_rng(0))
    out = apply_camera(batch, np.random.default_rng(1), QUERY_CAMERA)
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.float32) - batch).mean() > 2.0
    again = apply_camera(batch, np.random.default_rng(1), QUERY_CAMERA)
    assert again.tobytes() == out.tobytes()
    pil = apply_camera(Image.fromarray(batch[0]), np.random.default_rng(1), GALLERY_CAMERA)
    assert isinstance(pil, Image.Image) and pil.size == (batch.shape[2], batch.shape[1])
    # The query camera is the stronger shift on average.
    rng_g, rng_q = np.random.default_rng(5), np.random.default_rng(5)
    dg = np.mean([np.abs(apply_camera(batch, rng_g, GALLERY_CAMERA).astype(np.float32) - batch).mean() for _ in range(3)])
    dq = np.mean([np.abs(apply_camera(batch, rng_q, QUERY_CAMERA).astype(np.float32) - batch).mean() for _ in range(3)])
    assert dq > dg


BLUR_MATCH_TOL = 0.5  # mean abs difference (0-255) allowed between the two ways of blurring
BLUR_MISMATCH_MIN = 10.0  # ... and the least difference when the crop's blur is not scaled


def test_a_crop_of_a_blurred_scene_matches_the_crop_preset_with_scaled_blur():
    """Blur is drawn per image width: a 1:1 crop half as wide as its scene sees twice the blur,
    which is what with_blur_scaled(cfg, 2) gives when applied to the crop itself."""
    defocus_only = CameraConfig(exposure_stops=(0.0, 0.0), white_balance=0.0, vignetting=(0.0, 0.0), defocus_p=1.0,
                                defocus_px=(0.7, 0.7), motion_p=0.0, noise_sigma=(0.0, 0.0), downscale_p=0.0, jpeg_p=0.0)
    scene = np.random.default_rng(0).integers(0, 256, (256, 256, 3)).astype(np.uint8)
    inner = (slice(72, 184), slice(72, 184))  # away from both images' borders
    from_scene = apply_camera(scene, np.random.default_rng(1), defocus_only)[inner].astype(np.float32)
    crop = scene[64:192, 64:192]
    scaled = apply_camera(crop, np.random.default_rng(1), with_blur_scaled(defocus_only, 2.0))[8:120, 8:120]
    unscaled = apply_camera(crop, np.random.default_rng(1), defocus_only)[8:120, 8:120]
    assert np.abs(scaled - from_scene).mean() < BLUR_MATCH_TOL
    assert np.abs(unscaled - from_scene).mean() > BLUR_MISMATCH_MIN
    assert QUERY_CAMERA_AT_CROP.defocus_px == tuple(QUERY_SCENE_BLUR_AT_CROP * v for v in QUERY_CAMERA.defocus_px)
    assert QUERY_CAMERA_AT_CROP.noise_sigma == QUERY_CAMERA.noise_sigma  # only the blur differs


def test_camera_rejects_bad_input():
    with pytest.raises(ValueError):
        apply_camera(np.zeros((8, 8), np.uint8), np.random.default_rng(0))


JPEG_CHROMA_TOL = 2  # grey levels: a JPEG round trip of a grey RGB image leaves channels this close


def test_greyscale_share_turns_photos_black_and_white_and_zero_draws_nothing(cache):
    from dataclasses import replace

    batch = render_crop_batch([_sku()] * 6, cache, np.random.default_rng(0))
    grey = apply_camera(batch, np.random.default_rng(1), replace(QUERY_CAMERA, greyscale_p=1.0)).astype(int)
    assert np.abs(grey - grey[..., :1]).max() <= JPEG_CHROMA_TOL
    colour = apply_camera(batch, np.random.default_rng(1), QUERY_CAMERA).astype(int)
    assert np.abs(colour - colour[..., :1]).max() > 20
    # greyscale_p = 0 takes no random number: a config that sets it is the preset, bit for bit.
    off = apply_camera(batch, np.random.default_rng(1), replace(QUERY_CAMERA, greyscale_p=0.0))
    assert off.tobytes() == colour.astype(np.uint8).tobytes()
    with pytest.raises(ValueError, match="greyscale_p"):
        replace(QUERY_CAMERA, greyscale_p=1.5).validate()
