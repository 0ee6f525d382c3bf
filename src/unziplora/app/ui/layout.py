"""The page's components and how its events connect to `page.Page`'s handlers."""

from __future__ import annotations

import gradio as gr

from ...methods import resolve_config
from ...run.formats import EXPORT_FORMATS
from ...methods import Method
from ...core.prompts import CONTENT_TAG, STYLE_TAG
from .page import METHOD_LABELS, Page, mode_choices
from .tasks import form_defaults

CACHE_AGE_S = 6 * 3600

CSS = """
.uz-msg { padding: 8px 12px; border-radius: 6px; margin: 4px 0; }
.uz-error { background: #fde8e8; color: #8a1c1c; border: 1px solid #f5b5b5; }
.uz-info { background: #eef5ff; color: #1d3f73; border: 1px solid #c5dafc; }
.uz-bar { height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; }
.uz-fill { height: 100%; background: #4f7cff; transition: width 0.4s; }
.uz-progress[data-state=done] .uz-fill { background: #2f9e55; }
.uz-progress[data-state=cancelled] .uz-fill, .uz-progress[data-state=failed] .uz-fill { background: #d08a2a; }
.uz-text, .uz-queue { font-size: 0.9em; margin-top: 4px; }
.uz-notes { font-family: ui-monospace, monospace; font-size: 0.8em; color: #555; max-height: 7.5em; overflow-y: auto; }
.uz-summary { font-size: 0.85em; white-space: pre-wrap; }
#uz-previews .thumbnail-item, #uz-run-previews .thumbnail-item { aspect-ratio: 2.7 / 1; }
"""

TOKENS_HELP = (f"**Prompt tokens.** `{CONTENT_TAG}` stands for the run's subject token (its identifier, e.g. "
               f"*monadikos*), `{STYLE_TAG}` for its style words. In *both* and *across runs*, the content branch "
               f"sees the prompt without the style clause (`in {STYLE_TAG} style`) and the style branch sees it "
               f"without `{CONTENT_TAG}`, as in training; *content alone* and *style alone* load one LoRA under the "
               f"whole prompt. Example: `A {CONTENT_TAG} cat in {STYLE_TAG} style on a boat`.")


def build_blocks(page: Page) -> gr.Blocks:
    """The whole page: decompose, result, generate, download, runs."""
    # Gradio's copies of uploads and of the images it shows (previews, galleries) are deleted once an
    # hour when older than CACHE_AGE_S, and all of them when the page stops
    with gr.Blocks(title="unziplora", analytics_enabled=False, delete_cache=(3600, CACHE_AGE_S)) as blocks:
        state = gr.BrowserState({}, storage_key="unziplora-page")  # kept across reloads: the session's jobs
        gr.Markdown(f"## unziplora: one image → a content LoRA and a style LoRA\n"
                    f"Base model `{page.base_model}` · runs in `{page.runs.root}`")
        msg = gr.HTML(elem_id="uz-message")
        with gr.Row():
            run = gr.Dropdown(label="Run", choices=[], value=None, elem_id="uz-run", scale=4,
                              info="the run the Result, Generate and Download tabs use")
            refresh = gr.Button("Refresh runs", elem_id="uz-refresh", scale=1)
        with gr.Tabs(selected="decompose") as tabs:
            with gr.Tab("Decompose", id="decompose"):
                with gr.Row():
                    with gr.Column():
                        upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="uz-upload")
                        shown_input = gr.Image(label="as training reads it", type="pil", interactive=False,
                                               height=200, elem_id="uz-input-preview")
                    with gr.Column():
                        subject = gr.Textbox(label="Subject word", placeholder="e.g. cat", elem_id="uz-subject")
                        style = gr.Textbox(label="Style words", placeholder="e.g. watercolor", elem_id="uz-style")
                        name = gr.Textbox(label="Run name", placeholder="blank: SUBJECT-STYLE", elem_id="uz-name")
                        with gr.Accordion("Advanced", open=False, elem_id="uz-advanced"):
                            method = gr.Dropdown(label="Method", value=Method.UNZIPLORA.value, elem_id="uz-method",
                                                 choices=[(label, m.value) for m, label in METHOD_LABELS.items()])
                            d = form_defaults(page.base_model, Method.UNZIPLORA.value)
                            steps = gr.Number(d["steps"], label="Steps", precision=0, minimum=1, elem_id="uz-steps")
                            rank = gr.Number(d["rank"], label="Rank", precision=0, minimum=1, elem_id="uz-rank")
                            resolution = gr.Number(d["resolution"], label="Resolution (px)", precision=0, minimum=8,
                                                   elem_id="uz-resolution")
                            seed = gr.Number(d["seed"], label="Seed", precision=0, elem_id="uz-seed")
                            previews_per_run = gr.Number(4, label="Previews per run", precision=0, minimum=0,
                                                         elem_id="uz-previews-per-run",
                                                         info="preview grids drawn while training (0: none)")
                            gr.Markdown("The numbers start at the base model's defaults for the chosen method.")
                        with gr.Row():
                            go = gr.Button("Decompose", variant="primary", elem_id="uz-decompose")
                            cancel = gr.Button("Cancel", variant="stop", elem_id="uz-cancel")
                        cancel_job = gr.Dropdown(label="Job to cancel", choices=[], value=None, elem_id="uz-cancel-job",
                                                 info="blank: the latest decompose")
                progress = gr.HTML(elem_id="uz-progress")
                queue = gr.HTML(elem_id="uz-queue")
                notes = gr.HTML(elem_id="uz-notes")
                previews = gr.Gallery(label="Previews as they are drawn (content | style | together)", columns=2,
                                      fit_columns=False, height="auto", elem_id="uz-previews", object_fit="contain",
                                      buttons=[])
                with gr.Accordion("Resume an interrupted run", open=False, elem_id="uz-resume-box"):
                    resume_run = gr.Dropdown(label="Interrupted run (checkpoint kept)", choices=[],
                                             elem_id="uz-resume-run")
                    with gr.Row():
                        resume = gr.Button("Resume", elem_id="uz-resume")
                        discard = gr.Button("Delete it", elem_id="uz-discard")
            with gr.Tab("Result", id="result"):
                with gr.Row():
                    # captions above the images: Gradio's label floats over an image's top edge
                    with gr.Column():
                        gr.Markdown("**input · content alone · style alone · together**")
                        grid = gr.Image(show_label=False, type="filepath", interactive=False, elem_id="uz-grid")
                    with gr.Column():
                        gr.Markdown("**loss curve**")
                        loss = gr.Image(show_label=False, type="filepath", interactive=False, elem_id="uz-loss")
                summary = gr.HTML(elem_id="uz-summary")
                run_previews = gr.Gallery(label="previews during training", columns=2, height="auto",
                                          fit_columns=False, elem_id="uz-run-previews", object_fit="contain", buttons=[])
            with gr.Tab("Generate", id="generate"):
                gr.Markdown(TOKENS_HELP)
                mode = gr.Radio(mode_choices(), value="both", label="Mode", elem_id="uz-mode")
                with gr.Row(visible=False) as cross_row:
                    content_run = gr.Dropdown(label="content (subject) from run", choices=[], elem_id="uz-content-run")
                    style_run = gr.Dropdown(label="style from run", choices=[], elem_id="uz-style-run")
                prompt = gr.Textbox(label="Prompt", value=f"A {CONTENT_TAG} in {STYLE_TAG} style", elem_id="uz-prompt")
                with gr.Row():
                    seeds = gr.Textbox(label="Seeds", placeholder="blank: the run's, e.g. 0 1 2", elem_id="uz-seeds")
                    resolved = resolve_config({"model.base_model": page.base_model})
                    sample, cfg = resolved.config.sample, resolved.base is None or resolved.base.family.cfg
                    gen_steps = gr.Number(sample.steps, label="Steps", precision=0, minimum=1, elem_id="uz-gen-steps",
                                          info="denoising steps (set to the run's when a run opens)")
                    guidance = gr.Number(sample.guidance_scale, label="Guidance", minimum=0, elem_id="uz-guidance",
                                         info="classifier-free guidance (the run's)" if cfg else
                                         "the model's guidance input, no CFG batch (the run's)")
                    num_images = gr.Number(label="Images per seed", value=1, precision=0, minimum=1,
                                           elem_id="uz-num-images")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="uz-generate", scale=3)
                    cancel_gen = gr.Button("Cancel", variant="stop", elem_id="uz-cancel-generate", scale=1)
                gallery = gr.Gallery(label="Generated", columns=4, fit_columns=False, height="auto",
                                     elem_id="uz-gallery", object_fit="contain")
            with gr.Tab("Download", id="download"):
                gr.Markdown("The run's content LoRA and style LoRA, each an ordinary LoRA: **kohya** loads in "
                            "ComfyUI, AUTOMATIC1111 and kohya; **diffusers** with `pipe.load_lora_weights`. "
                            "The model card (README.md) says how to prompt them.")
                fmt = gr.Radio(list(EXPORT_FORMATS), value="kohya", label="Format", elem_id="uz-format")
                download = gr.Button("Prepare the files", elem_id="uz-download")
                files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="uz-files")
            with gr.Tab("Runs", id="runs"):
                gr.Markdown("The runs in the runs folder, newest first; click one to open it.")
                runs_gallery = gr.Gallery(label="Runs", columns=5, fit_columns=False, height="auto", elem_id="uz-runs",
                                          buttons=[], allow_preview=False, object_fit="contain")
                runs_table = gr.Dataframe(headers=["run", "subject", "style", "method", "steps", "created (UTC)"],
                                          interactive=False, elem_id="uz-runs-table", wrap=True)

        choices = [run, content_run, style_run, resume_run, runs_gallery, runs_table]
        blocks.load(page.refresh, [run], choices)
        blocks.load(page.on_reload, [state], [state])
        refresh.click(page.refresh, [run], choices)
        upload.change(page.on_upload, [upload], [msg, shown_input, upload])
        go.click(page.on_decompose,
                 [upload, subject, style, name, method, steps, rank, resolution, seed, previews_per_run, state],
                 [msg, state, progress])
        method.input(page.on_method, [method], [steps, rank, resolution, seed])  # the user's choice only
        cancel_job.focus(page.cancel_choices, [state], [cancel_job])
        cancel.click(page.on_cancel, [state, cancel_job], [msg])
        discard.click(page.on_discard, [resume_run], [msg, resume_run])
        cancel_gen.click(page.on_cancel_generate, [state], [msg])
        resume.click(page.on_resume, [resume_run, state], [msg, state])
        run.change(page.on_select_run, [run], [msg, grid, loss, summary, run_previews, prompt, gen_steps, guidance])
        mode.change(lambda m: gr.update(visible=m == "cross"), [mode], [cross_row])
        generate.click(page.on_generate,
                       [mode, run, content_run, style_run, prompt, seeds, gen_steps, guidance, num_images, state],
                       [msg, state])
        download.click(page.on_download, [run, fmt], [msg, files])
        runs_gallery.select(page.on_runs_select, None, [run, tabs])
        runs_table.select(page.on_table_select, None, [run, tabs])
        gr.Timer(0.5).tick(page.poll, [state, run],
                           [state, msg, progress, previews, notes, queue, run, content_run, style_run, gallery,
                            runs_gallery, runs_table, resume_run, tabs],
                           show_progress="hidden")
    return blocks
