#!/usr/bin/env bash
# LLaVA-NeXT (LLaVA-1.6, Vicuna-7B, anyres) fine-tuning with GSWA, using the LLaVA-NeXT repository's
# training code through gswa-plugin's launcher. Arguments are LLaVA-NeXT's own, plus --gswa_config.
#
# Install:   see README.md (LLaVA-NeXT from source with --no-deps, next to gswa-plugin[llava])
# Launch:    1 GPU:   NUM_GPUS=1 bash recipes/llava-next/llava/finetune_gswa.sh
#            8 GPUs:  NUM_GPUS=8 bash recipes/llava-next/llava/finetune_gswa.sh
# Sized for: 8 x 80 GB with ZeRO-3 (batch 4 per GPU x 8 = 32); one GPU: set GRAD_ACC=8.
# Runs from any working directory: files of this recipe resolve from the script's own folder;
# DATA, IMAGES and OUT from where it is launched.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NUM_GPUS=${NUM_GPUS:-8}
GRAD_ACC=${GRAD_ACC:-1}
MODEL=${MODEL:-liuhaotian/llava-v1.6-vicuna-7b}
DATA=${DATA:-data/llava_next_mix.json}
IMAGES=${IMAGES:-data/images}
ZERO=${ZERO:-$HERE/zero3.json}            # DeepSpeed ZeRO-3 (a copy of this project's; LLaVA-NeXT's scripts/zero3.json also works)
OUT=${OUT:-outputs/llava-next-gswa}
if [ ! -f "$ZERO" ]; then
  echo "finetune_gswa.sh: DeepSpeed config not found: $ZERO (set ZERO=/path/to/zero3.json)" >&2
  exit 2
fi

deepspeed --num_gpus "$NUM_GPUS" --module gswa_plugin.integrations.llava.train \
  --gswa_config "$HERE/gswa.yaml" \
  --attn_implementation sdpa \
  --deepspeed "$ZERO" \
  --model_name_or_path "$MODEL" \
  --version v1 \
  --data_path "$DATA" \
  --image_folder "$IMAGES" \
  --vision_tower openai/clip-vit-large-patch14-336 \
  --mm_projector_type mlp2x_gelu \
  --mm_vision_select_layer -2 \
  --mm_use_im_start_end False \
  --mm_use_im_patch_token False \
  --image_aspect_ratio anyres \
  --image_grid_pinpoints "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]" \
  --mm_patch_merge_type spatial_unpad \
  --mm_tunable_parts "mm_mlp_adapter,mm_language_model" \
  --group_by_modality_length True \
  --bf16 True \
  --output_dir "$OUT" \
  --num_train_epochs 1 \
  --per_device_train_batch_size 4 \
  --gradient_accumulation_steps "$GRAD_ACC" \
  --learning_rate 1e-5 \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type cosine \
  --logging_steps 10 \
  --save_strategy steps \
  --save_steps 1000 \
  --save_total_limit 2 \
  --model_max_length 4096 \
  --gradient_checkpointing True \
  --dataloader_num_workers 4 \
  --lazy_preprocess True \
  --report_to none
