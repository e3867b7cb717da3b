"""The one shared list of representative timm models the fast tests parametrize over."""

# name -> input (H, W) used in tests: non-square, small, valid for the model
CNNS = ['resnet18', 'efficientnet_b0', 'mobilenetv3_large_100', 'regnety_002', 'densenet121',
        'hrnet_w18_small', 'dla34']
STRIDE4_FIRST = ['convnext_atto']
NHWC = ['swin_tiny_patch4_window7_224', 'mambaout_femto']
HOOK_BASED = ['xception41']
PLAIN = ['vit_tiny_patch16_224', 'deit_tiny_patch16_224', 'eva02_tiny_patch14_224',
         'vit_pwee_patch16_reg1_gap_256']

REPRESENTATIVE = CNNS + STRIDE4_FIRST + NHWC + HOOK_BASED
NON_SQUARE = (256, 320)
